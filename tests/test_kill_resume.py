"""`cpcnn`, `mscnn` and `demo` killed with SIGKILL mid-run, then re-run, end exactly where an
uninterrupted run ends (CPU, fixed seed): identical weights and identical JSON apart from wall-clock fields.

(`train` has the same test in test_cli.py.) Each run is a subprocess on one thread; the kill comes right after
a training checkpoint appears (for the demo: one of the CP-CNN's, after the base model), so the re-run has to
skip what is finished and continue a half-trained component.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMING_FRAGMENTS = (
    "images_per_s",
    "speedup",
    "speed_targets",
    "seconds",
    "timing",
    "bench",
    "ratio",
    "efficiency",
    "budget_bytes",
)
"""Keys whose values are measured wall-clock time (or derived from it), or the memory free at the time (the CP-CNN's
"auto" feature budget): the only ones two runs may differ in."""


def without_timing(obj):
    """`obj` (nested JSON) minus every key that holds a wall-clock measurement."""
    if isinstance(obj, dict):
        return {
            key: without_timing(value)
            for key, value in obj.items()
            if not any(fragment in key for fragment in TIMING_FRAGMENTS)
        }
    if isinstance(obj, list):
        return [without_timing(value) for value in obj]
    return obj


def python(code: str) -> list[str]:
    """argv running `code` on one torch thread (what OMP_NUM_THREADS=1 alone does not guarantee)."""
    return [sys.executable, "-c", f"import torch; torch.set_num_threads(1)\n{code}"]


def kill_after_checkpoint(argv: list[str], out: Path, checkpoint: str, finished: str) -> None:
    """Start `argv`, SIGKILL it once a file matching `checkpoint` exists under `out`; it must not have finished."""
    process = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline and not any(out.glob(checkpoint)):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert any(out.glob(checkpoint)), f"no {checkpoint} appeared before the kill"
    assert not (out / finished).exists(), "the run finished before it could be killed"


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(str(a)), load_file(str(b))
    assert first.keys() == second.keys()
    for key in first:
        assert (first[key] == second[key]).all(), key


def assert_same_json(a: Path, b: Path) -> None:
    first, second = (without_timing(json.loads(path.read_text())) for path in (a, b))
    assert first == second


def run_both(argv_for, tmp_path: Path, checkpoint: str, finished: str) -> tuple[Path, Path]:
    """An uninterrupted run and a killed-then-resumed one of the same command; returns their output directories."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(argv_for(straight), check=True, env=ENV, capture_output=True)
    kill_after_checkpoint(argv_for(killed), killed, checkpoint, finished)
    subprocess.run(argv_for(killed, resume=True), check=True, env=ENV, capture_output=True)
    return straight, killed


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kill") / "base"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dynacnn",
            "train",
            "--data",
            "digits",
            "--width",
            "0.125",
            "--stem",
            "small",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        check=True,
        env=ENV,
        capture_output=True,
    )
    return out


def test_cpcnn_killed_mid_training_resumes_to_the_same_result(base_run, tmp_path):
    def argv(out: Path, resume: bool = False) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dynacnn",
            "cpcnn",
            "--run",
            str(base_run),
            "--out",
            str(out),
            "--split",
            "layer2",
            "--configs",
            "L0,L22,LP",
            "--epochs",
            "3",
            "--memory-format",
            "contiguous",
            "--device",
            "cpu",
            *(["--resume"] if resume else []),
        ]

    straight, killed = run_both(argv, tmp_path, "components/*/checkpoint.pt", "cpcnn.json")
    assert_same_weights(straight / "cpcnn.safetensors", killed / "cpcnn.safetensors")
    assert_same_json(straight / "cpcnn.json", killed / "cpcnn.json")


def test_mscnn_killed_mid_training_resumes_to_the_same_result(tmp_path):
    def argv(out: Path, resume: bool = False) -> list[str]:
        return python(
            "from dynacnn.mscnn.model import MSCNNConfig, StageConfig\n"
            "from dynacnn.mscnn.config import MSCNNRunConfig\n"
            "from dynacnn.mscnn.pipeline import run_mscnn\n"
            "config = MSCNNConfig(tuple(StageConfig(b, (4, 6), (1, 2), 8) for b in ('LL', 'LH', 'HL')), 1, 6, 2)\n"
            "data = {'num_classes': 6, 'num_groups': 2, 'samples_per_class': 60, 'image_size': 12, 'channels': 1}\n"
            "run_config = MSCNNRunConfig(epochs=3, quick=True, model=config, batch_size=16)\n"
            f"run_mscnn({str(out)!r}, run_config, data='synthetic', data_options=data, device='cpu', resume={resume})"
        )

    straight, killed = run_both(argv, tmp_path, "train/checkpoint.pt", "mscnn.json")
    assert_same_weights(straight / "model.safetensors", killed / "model.safetensors")
    assert_same_json(straight / "mscnn.json", killed / "mscnn.json")


def test_demo_killed_mid_training_resumes_to_the_same_result(tmp_path):
    def argv(out: Path, resume: bool = False) -> list[str]:  # the demo always resumes what it finds in --out
        return python(
            "from rich.console import Console\n"
            "from dynacnn.experiments.demo import DemoConfig, demo_cpcnn_config, run_demo\n"
            "config = DemoConfig(data='synthetic', quick=True, data_options={'samples_per_class': 40},"
            " cpcnn=demo_cpcnn_config(quick=True, memory_format='contiguous'))\n"
            f"run_demo({str(out)!r}, config, device='cpu', console=Console(quiet=True))"
        )

    straight, killed = run_both(argv, tmp_path, "cpcnn/components/*/checkpoint.pt", "report.json")
    for weights in (
        "base/model.safetensors",
        "matched/model.safetensors",
        "cpcnn/cpcnn.safetensors",
        "mscnn/model.safetensors",
    ):
        assert_same_weights(straight / weights, killed / weights)
    assert_same_json(straight / "report.json", killed / "report.json")
