"""Batches: shapes, normalisation, reproducible shuffling, batched crop / flip augmentation."""

from __future__ import annotations

import time

import pytest
import torch

from dynacnn.data import DatasetInfo, Split, batches, normalize
from dynacnn.data.batching import crop_flip
from dynacnn.errors import ConfigError

INFO = DatasetInfo("t", ["a", "b", "c"], (2, 5, 6), (0.5, 0.25), (0.5, 0.125), "crop_flip", 2)


def _split(n: int = 23) -> Split:
    images = torch.randint(1, 256, (n, 2, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Split(images, torch.arange(n) % 3, torch.arange(n))


def test_shapes_dtypes_and_normalisation() -> None:
    split = _split()
    out = list(batches(split, INFO, 10))
    assert [len(y) for _, y in out] == [10, 10, 3]
    x, y = out[0]
    assert x.dtype == torch.float32 and x.shape == (10, 2, 5, 6) and y.dtype == torch.int64
    expected = (split.images[:10].float() / 255 - torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)) / torch.tensor(
        [0.5, 0.125]
    ).view(1, 2, 1, 1)
    assert torch.allclose(x, expected) and torch.equal(y, split.labels[:10])
    assert torch.equal(torch.cat([x for x, _ in out]), normalize(split.images, INFO))


def test_normalize_refuses_wrong_input() -> None:
    with pytest.raises(ConfigError, match="uint8"):
        normalize(torch.zeros(1, 2, 5, 6), INFO)
    with pytest.raises(ConfigError, match="uint8"):
        normalize(torch.zeros(1, 3, 5, 6, dtype=torch.uint8), INFO)
    with pytest.raises(ConfigError, match="batch_size"):
        next(batches(_split(), INFO, 0))


def test_shuffle_is_reproducible_from_generator_state() -> None:
    split = _split()
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    first = [y for _, y in batches(split, INFO, 8, shuffle=True, augment=True, generator=generator)]
    second = [y for _, y in batches(split, INFO, 8, shuffle=True, augment=True, generator=generator)]
    generator.set_state(state)
    replay = list(batches(split, INFO, 8, shuffle=True, augment=True, generator=generator))
    assert all(torch.equal(a, b) for a, (_, b) in zip(first, replay))
    assert not all(torch.equal(a, b) for a, b in zip(first, second))
    assert sorted(torch.cat(first).tolist()) == sorted(split.labels.tolist())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    list(batches(split, INFO, 8, shuffle=True, augment=True))
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is never touched


def test_augment_false_is_identity_and_true_changes_images() -> None:
    split = _split()
    plain = torch.cat([x for x, _ in batches(split, INFO, 8, augment=False)])
    assert torch.equal(plain, normalize(split.images, INFO))
    augmented = torch.cat([x for x, _ in batches(split, INFO, 8, augment=True)])
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    none = DatasetInfo("t", ["a"], (2, 5, 6), (0.5, 0.25), (0.5, 0.125), "none", 2)
    assert torch.equal(torch.cat([x for x, _ in batches(split, none, 8, augment=True)]), plain)


def _windows(out: torch.Tensor, image: torch.Tensor, padding: int) -> list[int]:
    """For each output image, which zero-padded window of `image` it is: 2 * offset + flipped."""
    _, height, width = image.shape
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    candidates = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            window = padded[:, top : top + height, left : left + width]
            candidates += [window, window.flip(-1)]
    return [next(i for i, window in enumerate(candidates) if torch.equal(window, o)) for o in out]


def test_crop_flip_draws_every_offset_and_both_orientations() -> None:
    image = torch.arange(1, 31, dtype=torch.uint8).view(1, 5, 6).expand(2, 5, 6)
    batch = image.expand(400, 2, 5, 6).contiguous()
    found = _windows(crop_flip(batch, 2, True, torch.Generator().manual_seed(0)), image, 2)
    assert set(found) == set(range(50))
    cropped = _windows(crop_flip(batch, 2, False, torch.Generator().manual_seed(0)), image, 2)
    assert set(cropped) == set(range(0, 50, 2))  # every offset, never mirrored


def test_augmentation_is_fast() -> None:
    images = torch.randint(0, 256, (6000, 1, 28, 28), dtype=torch.uint8)
    split = Split(images, torch.zeros(6000, dtype=torch.int64), torch.arange(6000))
    info = DatasetInfo("t", ["a"], (1, 28, 28), (0.5,), (0.5,), "crop_flip", 2)
    start = time.perf_counter()
    for _ in batches(split, info, 128, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0)):
        pass
    assert time.perf_counter() - start < 2.0  # a 54k-image epoch costs ~9x this


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_on_cuda_match_cpu() -> None:
    split = _split()
    cpu = batches(split, INFO, 8, shuffle=True, augment=True, generator=torch.Generator().manual_seed(1))
    gpu = batches(split, INFO, 8, shuffle=True, augment=True, generator=torch.Generator().manual_seed(1), device="cuda")
    for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(cpu, gpu):
        assert x_gpu.device.type == "cuda" and y_gpu.device.type == "cuda"
        assert torch.allclose(x_cpu, x_gpu.cpu()) and torch.equal(y_cpu, y_gpu.cpu())
