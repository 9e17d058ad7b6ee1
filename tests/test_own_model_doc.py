"""docs/own-model.md, run as written: its shell blocks through bash (with this environment's `dynacnn` on PATH),
its Python blocks in order, in a directory holding a generated 10-class image folder and a torchvision ResNet-18
checkpoint with random weights (the page's `photos/` and `resnet18.safetensors`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from dynacnn.cpcnn import load_cpcnn

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-model.md"
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
CLASSES, TRAIN, TEST = 10, 24, 8


def write_photos(root: Path) -> None:
    """`root/{train,test}/<class>/*.png`: 80x72 RGB images, each class a colour of its own plus noise."""
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 226, size=(CLASSES, 3))
    for split, count in (("train", TRAIN), ("test", TEST)):
        for label in range(CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = colours[label] + rng.normal(0, 30, size=(72, 80, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")


def run_block(language: str, code: str, cwd: Path) -> None:
    if language == "python":
        exec(compile(code, f"{DOC.name} (python block)", "exec"), {"__name__": "__doc_example__"})
        return
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{code}\n{done.stdout}\n{done.stderr}"


def test_the_page_has_the_promised_blocks():
    blocks = BLOCK.findall(DOC.read_text())
    assert [language for language, _ in blocks] == ["sh", "sh", "python"]
    assert "dynacnn cluster --checkpoint" in blocks[0][1] and "dynacnn cpcnn --checkpoint" in blocks[1][1]


def test_the_own_model_page_runs_as_written(tmp_path, monkeypatch, capsys):
    write_photos(tmp_path / "photos")
    torch.manual_seed(0)
    from dynacnn.models import build_external

    backbone = build_external("torchvision:resnet18", CLASSES)
    save_file(
        {key: value.contiguous() for key, value in backbone.state_dict().items()}, tmp_path / "resnet18.safetensors"
    )
    monkeypatch.chdir(tmp_path)
    for language, code in BLOCK.findall(DOC.read_text()):
        run_block(language, code, tmp_path)

    clusters = json.loads((tmp_path / "runs/resnet18-clusters/clusters.json").read_text())
    out = tmp_path / "runs/resnet18-cpcnn"
    result = json.loads((out / "cpcnn.json").read_text())
    assert len(clusters["hyper_classes"]) == 2 and (out / "cpcnn.md").exists()
    assert result["clusters"] == [group["names"] for group in clusters["hyper_classes"]]
    assert result["split"] == "layer3" and result["settings"]["epochs"] == 1
    printed = capsys.readouterr().out
    assert "top-1 on 16 test images:" in printed and "heads run per image:" in printed
    # the module the page loads is the one the conversion describes
    model = load_cpcnn(out)
    assert tuple(model.input_shape) == (3, 32, 32) and model.num_classes == CLASSES
    assert 0 < result["chosen"]["macs_per_image"] < result["base"]["macs_per_image"]
