"""Streamed image folders against the in-memory path: membership, evaluation views, seeded augmentation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _data_writers import write_image_folder
from PIL import Image
from torchvision.transforms import v2

from dynacnn.data import StreamSplit, batches, load_dataset, normalize
from dynacnn.data.stream import LARGE_CROP_FRACTION
from dynacnn.errors import ConfigError, DataError
from dynacnn.runs import DataSpec

CLASSES = ("ant", "bee", "cat", "dog")


@pytest.fixture(scope="module", params=["RGB", "L"])
def folder(request, tmp_path_factory) -> Path:
    """4 classes x 12 training and 3 test PNGs of 24 x 20 px (width x height), RGB or grayscale."""
    root = tmp_path_factory.mktemp(f"folder_{request.param}")
    return write_image_folder(root, CLASSES, train_per_class=12, test_per_class=3, size=(24, 20), mode=request.param)


def _stream(root: Path, **options):
    return load_dataset("imagefolder", root, stream=True, num_workers=0, **options)


@pytest.mark.parametrize("seed", [0, 5])
def test_same_membership_and_evaluation_tensors_as_in_memory(folder: Path, seed: int) -> None:
    memory, stream = load_dataset("imagefolder", folder, seed=seed), _stream(folder, seed=seed)
    assert isinstance(stream.test, StreamSplit) and stream.split_indices() == memory.split_indices()
    assert (
        stream.info.input_shape == memory.info.input_shape == ((3 if folder.name.startswith("folder_R") else 1), 20, 24)
    )
    assert np.allclose(stream.info.mean, memory.info.mean, atol=1e-6)
    assert np.allclose(stream.info.std, memory.info.std, atol=1e-6)
    for name in ("train", "calib", "test"):
        streamed, held = getattr(stream, name), getattr(memory, name)
        assert len(streamed) == len(held) and torch.equal(streamed.labels, held.labels)
        assert torch.equal(streamed.read_images(), held.images)
    for (x, y), (x_ref, y_ref) in zip(batches(stream.test, memory.info, 5), batches(memory.test, memory.info, 5)):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    part, ref = stream.train.subset(8, seed=3), memory.train.subset(8, seed=3)
    assert torch.equal(part.indices, ref.indices) and torch.equal(part.read_images(), ref.images)
    assert torch.equal(stream.train.read_images(4, 9), memory.train.images[4:9])


def test_resized_views_match_in_memory_and_a_resize_then_crop_reference(folder: Path) -> None:
    small = load_dataset("imagefolder", folder, image_size=16), _stream(folder, image_size=16)
    assert torch.equal(small[1].test.read_images(), small[0].test.images)
    large = (
        load_dataset("imagefolder", folder, image_size=112, crop_fraction=LARGE_CROP_FRACTION),
        _stream(folder, image_size=112),
    )
    assert large[1].train.files.fmt.crop_fraction == LARGE_CROP_FRACTION  # the default from 96 px up
    assert torch.equal(large[1].test.read_images(), large[0].test.images)
    mode = "L" if large[0].info.input_shape[0] == 1 else "RGB"
    reference = v2.Compose([v2.Resize(round(112 / LARGE_CROP_FRACTION)), v2.CenterCrop(112), v2.PILToTensor()])
    image = Image.open(folder / "test" / "bee" / "001.png").convert(mode)
    position = large[1].test.labels.tolist().index(1) + 1
    difference = (reference(image).float() - large[1].test.read_images(position, position + 1)[0].float()).abs()
    assert difference.mean() < 6  # the same framing; box resampling vs resize-then-crop differ slightly


def test_augmentation_is_a_seeded_pad_crop_flip_of_the_view(folder: Path) -> None:
    data = _stream(folder)
    view, padding = data.train.read_images(), data.info.crop_padding
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    before = torch.get_rng_state()
    first = torch.cat([x for x, _ in batches(data.train, data.info, 7, augment=True, generator=generator)])
    assert torch.equal(torch.get_rng_state(), before)
    generator.set_state(state)
    workers = load_dataset("imagefolder", folder, stream=True, num_workers=2)
    replay = torch.cat([x for x, _ in batches(workers.train, workers.info, 7, augment=True, generator=generator)])
    assert torch.equal(first, replay)  # independent of the worker count
    other = torch.cat([x for x, _ in batches(data.train, data.info, 7, augment=True)])
    assert not torch.equal(first, other)
    padded = torch.nn.functional.pad(view, (padding,) * 4)
    height, width = view.shape[2:]
    unflipped = 0
    for i, image in enumerate(first):
        crops = {
            (dy, dx, flip): normalize(padded[i : i + 1, :, dy : dy + height, dx : dx + width], data.info)[0]
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            for flip in (False, True)
        }
        matches = [key for key, crop in crops.items() if torch.equal(crop.flip(-1) if key[2] else crop, image)]
        assert matches, f"sample {i} is no crop / flip of its view"
        unflipped += any(not key[2] for key in matches)
    assert 0 < unflipped < len(first)


def test_augment_probability_and_large_images(folder: Path) -> None:
    data = _stream(folder, image_size=96)
    clean = torch.cat([x for x, _ in batches(data.train, data.info, 8)])
    for probability, expected in ((0.0, len(clean)), (1.0, 0)):
        out = torch.cat([x for x, _ in batches(data.train, data.info, 8, augment=probability)])
        assert sum(torch.equal(a, b) for a, b in zip(out, clean)) == expected
    mixed = torch.cat([x for x, _ in batches(data.train, data.info, 8, augment=0.5)])
    assert 0 < sum(torch.equal(a, b) for a, b in zip(mixed, clean)) < len(clean)
    with pytest.raises(ConfigError, match="probability"):
        next(batches(data.train, data.info, 8, augment=1.5))


def test_shuffled_order_is_seeded_and_unshuffled_order_is_the_split(folder: Path) -> None:
    data = _stream(folder)
    labels = [y for _, y in batches(data.train, data.info, 10)]
    assert torch.equal(torch.cat(labels), data.train.labels)
    runs = [
        torch.cat(
            [y for _, y in batches(data.train, data.info, 10, shuffle=True, generator=torch.Generator().manual_seed(s))]
        )
        for s in (4, 4, 9)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert sorted(runs[0].tolist()) == sorted(data.train.labels.tolist())


def test_streamed_split_refuses_in_memory_access_and_reports_bad_files_in_one_line(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, CLASSES[:2], train_per_class=6, test_per_class=2)
    data = load_dataset("imagefolder", root, stream=True, num_workers=1)
    with pytest.raises(DataError, match="streamed.*read_images"):
        data.test.images  # noqa: B018
    bad = root / "test" / "bee" / "001.png"
    bad.write_bytes(bad.read_bytes()[:50])  # the header still reads; the pixels do not
    data = load_dataset("imagefolder", root, stream=True, num_workers=1)
    with pytest.raises(DataError) as error:
        data.test.read_images()
    assert "cannot decode" in str(error.value) and "001.png" in str(error.value) and "\n" not in str(error.value)


def test_in_memory_decoding_that_would_not_fit_points_at_streaming(tmp_path: Path, monkeypatch) -> None:
    root = write_image_folder(tmp_path, CLASSES[:2])
    monkeypatch.setattr("dynacnn.data.imagefolder.available_memory", lambda: 100)
    with pytest.raises(DataError, match="stream=True"):
        load_dataset("imagefolder", root)
    assert len(load_dataset("imagefolder", root, stream=True, num_workers=0).train) > 0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"stream": "yes"}, "stream"),
        ({"num_workers": 2}, "num_workers.*stream=True"),
        ({"stream": True, "num_workers": -1}, "num_workers"),
        ({"crop_fraction": 0}, "crop_fraction"),
        ({"crop_fraction": 1.5}, "crop_fraction"),
        ({"image_size": 0}, "image_size"),
        ({"mean": (0.5, 0.5)}, r"--mean/--std need 3 value.*--mean has 2"),
        ({"std": (0.2, 0.2, 0.2, 0.2), "stream": True}, r"--mean/--std need 3 value"),
        ({"std": (0.2, 0.0, 0.2)}, "--std .*positive"),
        ({"mean": "0.5"}, "--mean"),
        ({"mean": (0.5, float("nan"), 0.5)}, "--mean"),
    ],
)
def test_bad_options_are_one_line_config_errors(tmp_path: Path, options: dict, match: str) -> None:
    root = write_image_folder(tmp_path, CLASSES[:2])
    with pytest.raises(ConfigError, match=match) as error:
        load_dataset("imagefolder", root, **options)
    assert "\n" not in str(error.value)


def test_data_spec_records_the_options_and_rederives_the_same_streamed_data(folder: Path) -> None:
    spec = DataSpec("imagefolder", str(folder), 0.25, 2, {"stream": True, "mean": (0.5,) * 3, "std": (0.25,) * 3})
    if "folder_L" in folder.name:
        spec = DataSpec("imagefolder", str(folder), 0.25, 2, {"stream": True, "mean": [0.5], "std": [0.25]})
    assert DataSpec(**json.loads(json.dumps(spec.__dict__))) == spec
    data, again = spec.load(num_workers=0), spec.load(num_workers=1)
    assert data.split_indices() == again.split_indices() and data.info == again.info
    assert list(data.info.mean) == spec.options["mean"] and list(data.info.std) == spec.options["std"]
    with pytest.raises(ConfigError, match="image_size would change"):
        spec.load(image_size=8)
