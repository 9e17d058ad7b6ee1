"""Where a conversion's backbone, data and hyper-classes come from: `dynacnn.sources` and `discover.use_clusters`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dynacnn.baseline import train_backbone
from dynacnn.cpcnn.discover import use_clusters
from dynacnn.cpcnn.serialize import build_backbone
from dynacnn.errors import ConfigError
from dynacnn.models.external import build_external
from dynacnn.runs import DataSpec, ModelSpec
from dynacnn.sources import data_options, load_source
from dynacnn.train import TrainConfig

ARCH = "torchvision:resnet18"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def write_folder(root: Path, classes: int, mode: str = "RGB", size: int = 12) -> Path:
    """`root/{train,test}/c<k>/*.png`: a few images per class, each class its own brightness."""
    rng = np.random.default_rng(classes)
    for split, count in (("train", 6), ("test", 2)):
        for label in range(classes):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                pixels = np.clip(40 * label + rng.normal(0, 10, size=shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised torchvision ResNet-18 with a 3-class head, saved as safetensors."""
    torch.manual_seed(0)
    state = {key: value.contiguous() for key, value in build_external(ARCH, 3).state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.safetensors"
    save_file(state, str(path))
    return path, state


def test_exactly_one_of_run_and_checkpoint(checkpoint, tmp_path):
    for kwargs in ({}, {"run": tmp_path, "checkpoint": checkpoint[0], "arch": ARCH, "data": "imagefolder"}):
        with pytest.raises(ConfigError, match="exactly one of --run DIR .* or --checkpoint FILE --arch ARCH"):
            load_source(**kwargs)


def test_data_options_with_a_run_are_refused_before_loading_it(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_source(tmp_path / "no-run", data="digits", options={"image_size": 16})
    assert "--data, --image-size cannot be used with --run" in str(info.value)


@pytest.mark.parametrize("missing", ["arch", "data"])
def test_a_checkpoint_needs_its_arch_and_data(missing, checkpoint):
    given = {"arch": ARCH, "data": "imagefolder"}
    given.pop(missing)
    with pytest.raises(ConfigError, match=f"--checkpoint needs --{missing}"):
        load_source(checkpoint=checkpoint[0], **given)


def test_a_checkpoint_source_is_the_checkpoint_with_the_given_data(checkpoint, tmp_path):
    path, state = checkpoint
    folder = write_folder(tmp_path / "photos", 3)
    options = data_options(16, MEAN, STD)
    source = load_source(checkpoint=path, arch=ARCH, data="imagefolder", data_dir=folder, options=options)
    loaded = source.backbone.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[key], state[key]) for key in state)
    info = source.data.info
    assert info.input_shape == (3, 16, 16) and info.class_names == ["c0", "c1", "c2"]
    assert list(info.mean) == MEAN and list(info.std) == STD
    assert source.data_spec == DataSpec("imagefolder", str(folder), 0.1, 0, options)
    spec = source.spec
    assert spec["checkpoint"] == {"path": str(path), "arch": ARCH} and spec["data"]["options"]["mean"] == MEAN
    assert source.run_dir is None and source.clusters_file is None
    # what load_cpcnn rebuilds from the recorded description takes the checkpoint's weights
    assert json.loads(json.dumps(spec)) == spec
    build_backbone(spec).load_state_dict(state)


def test_a_folder_of_another_class_count_is_refused(checkpoint, tmp_path):
    folder = write_folder(tmp_path / "photos", 4)
    with pytest.raises(ConfigError) as info:
        load_source(checkpoint=checkpoint[0], arch=ARCH, data="imagefolder", data_dir=folder)
    message = str(info.value)
    assert str(checkpoint[0]) in message and "3 output classes" in message and "has 4 (c0, c1, c2, ...)" in message


def test_a_grayscale_folder_for_an_rgb_model_is_refused(checkpoint, tmp_path):
    folder = write_folder(tmp_path / "photos", 3, mode="L")
    with pytest.raises(ConfigError, match="takes 3-channel images but the data .* has 1"):
        load_source(checkpoint=checkpoint[0], arch=ARCH, data="imagefolder", data_dir=folder)


def test_data_options_record_only_what_was_given():
    assert data_options() == {}
    assert data_options(32, [0.5], [0.25], stream=True, train_limit=None) == {
        "image_size": 32,
        "stream": True,
        "mean": [0.5],
        "std": [0.25],
    }
    for values in ([0.5, 0.5], [0.1] * 4):
        with pytest.raises(ConfigError, match=f"--std has {len(values)} values; give one per image channel"):
            data_options(std=values)


def test_a_run_source_is_the_trained_run(tmp_path):
    run = tmp_path / "run"
    spec = ModelSpec(width=0.125, stem="small")
    data = DataSpec("digits", options={"train_limit": 40})
    train_backbone(run, spec, data, TrainConfig(epochs=1, batch_size=32), device="cpu")
    source = load_source(run)
    assert source.spec["kind"] == "dynacnn" and source.spec["run_dir"] == str(run) and source.data_spec == data
    assert source.data.info.num_classes == source.backbone.fc.out_features == 10
    assert source.clusters_file is None
    (run / "clusters.json").write_text("{}")
    assert source.clusters_file == run / "clusters.json"


# --------------------------------------------------------------------------- which hyper-classes a conversion uses

NAMES = ["a", "b", "c", "d"]


def clusters_json(path: Path, groups: list[list[int]], names: list[str] = NAMES) -> Path:
    """A clusters.json as `dynacnn cluster` writes it (the parts `use_clusters` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"id": i, "classes": group, "names": [names[c] for c in group]} for i, group in enumerate(groups)]
    path.write_text(json.dumps({"class_names": names, "similarity": "confusion", "hyper_classes": entries}))
    return path


def test_a_given_clusters_file_is_copied_into_out(tmp_path):
    given = clusters_json(tmp_path / "mine.json", [[0, 1], [2, 3]])
    from_run = clusters_json(tmp_path / "run" / "clusters.json", [[0], [1, 2, 3]])
    out = tmp_path / "out"
    said = use_clusters(out, given, from_run, NAMES, 2)
    assert said == f"hyper-classes from {given} (--clusters-file)"
    copied = json.loads((out / "clusters.json").read_text())
    assert copied["hyper_classes"] == json.loads(given.read_text())["hyper_classes"]
    assert copied["copied_from"] == str(given)


def test_the_runs_clusters_replace_an_earlier_conversions(tmp_path):
    out = tmp_path / "out"
    clusters_json(out / "clusters.json", [[0, 1, 2], [3]])
    from_run = clusters_json(tmp_path / "run" / "clusters.json", [[0], [1, 2, 3]])
    assert "written by `dynacnn cluster`" in use_clusters(out, None, from_run, NAMES, None)
    assert json.loads((out / "clusters.json").read_text())["hyper_classes"][0]["classes"] == [0]


def test_without_a_clusters_file_out_keeps_its_own_or_alg2_fits_them(tmp_path):
    out = tmp_path / "out"
    assert "fitted by Alg. 2 (3 of them)" in use_clusters(out, None, None, NAMES, 3)
    assert not out.exists()
    clusters_json(out / "clusters.json", [[0, 1, 2], [3]])
    assert "made by an earlier run into this --out" in use_clusters(out, None, None, NAMES, None)


def test_hyper_classes_fitted_on_other_weights_are_refused_unless_given(tmp_path):
    """A retrained model must not silently reuse the hyper-classes fitted on its old weights (clusters.json records
    their SHA-256); a --clusters-file is the user's choice and is kept whatever it was fitted on."""
    old, new = "a" * 64, "b" * 64
    from_run = clusters_json(tmp_path / "run" / "clusters.json", [[0], [1, 2, 3]])
    from_run.write_text(json.dumps({**json.loads(from_run.read_text()), "backbone_sha256": old}))
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        use_clusters(out, None, from_run, NAMES, None, new)
    assert str(from_run) in str(info.value) and "re-run `dynacnn cluster`" in str(info.value)
    assert not out.exists()
    assert "written by `dynacnn cluster`" in use_clusters(out, None, from_run, NAMES, None, old)
    assert "(--clusters-file)" in use_clusters(out, from_run, None, NAMES, None, new)
    kept = json.loads((out / "clusters.json").read_text())
    assert kept["kept_by_user"] and kept["backbone_sha256"] == old
    assert "made by an earlier run" in use_clusters(out, None, None, NAMES, None, new)
    (out / "clusters.json").write_text(json.dumps({**kept, "kept_by_user": False}))
    with pytest.raises(ConfigError, match="delete it to fit the hyper-classes on these weights"):
        use_clusters(out, None, None, NAMES, None, new)
    assert "made by an earlier run" in use_clusters(out, None, None, NAMES, None, old)
    assert "made by an earlier run" in use_clusters(out, None, None, NAMES, None, None)


@pytest.mark.parametrize(
    "groups, names, count, fragment",
    [
        ([[0, 1], [2, 3]], NAMES, 3, "holds 2 hyper-classes but --hyper-classes 3 was given"),
        ([[0, 1], [2, 3]], ["w", "x", "y", "z"], None, "was made for the classes ['w', 'x', 'y']"),
        ([[0, 1], [1, 2, 3]], NAMES, None, "partition the classes"),
        ([[0, 1], [2]], NAMES[:3], None, "cover 3 classes but the model has 4"),
    ],
    ids=["count", "class-names", "overlap", "too-few-classes"],
)
def test_a_clusters_file_that_does_not_fit_is_refused_before_anything_is_written(
    groups, names, count, fragment, tmp_path
):
    given = clusters_json(tmp_path / "given.json", groups, names)
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        use_clusters(out, given, None, NAMES, count)
    assert fragment in str(info.value) and str(given) in str(info.value)
    assert not out.exists()
