"""Random and mutated bytes into the IDX and CIFAR parsers: a DataError or a valid result, nothing else."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
from _data_writers import idx_bytes, py2_pickle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynacnn.data.cifar import parse_batch
from dynacnn.data.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx
from dynacnn.errors import DataError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_rng = np.random.default_rng(0)
IDX_IMAGES = idx_bytes(_rng.integers(0, 256, size=(3, 4, 5), dtype=np.uint8))
IDX_LABELS = idx_bytes(np.array([0, 1, 2], np.uint8))
CIFAR_BATCH = {
    b"batch_label": b"b",
    b"labels": [0, 1, 2],
    b"data": _rng.integers(0, 256, size=(3, 3072), dtype=np.uint8),
}
SEEDS = [IDX_IMAGES, IDX_LABELS, gzip.compress(IDX_IMAGES), gzip.compress(IDX_LABELS)]
PICKLES = [py2_pickle(CIFAR_BATCH)] + [pickle.dumps(CIFAR_BATCH, protocol=p) for p in (3, 4)]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed file with a few bytes overwritten, inserted or deleted, or truncated."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        if action == "set":
            data[pos] = draw(st.integers(0, 255))
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[pos]
        else:
            del data[pos:]
        if not data:
            break
    return bytes(data)


def _idx_ok_or_data_error(data: bytes) -> None:
    for magic in (IMAGES_MAGIC, LABELS_MAGIC):
        try:
            array = parse_idx(data, "fuzz", magic)
        except DataError:
            continue
        assert array.dtype == np.uint8 and array.ndim == magic & 0xFF


def _cifar_ok_or_data_error(data: bytes) -> None:
    try:
        images, (labels,) = parse_batch(data, "fuzz", ["labels"], [10])
    except DataError:
        return
    assert images.shape[1:] == (3, 32, 32) and len(labels) == len(images)


@FUZZ
@given(st.binary(max_size=200))
def test_idx_random_bytes(data: bytes) -> None:
    _idx_ok_or_data_error(data)


@FUZZ
@given(mutated(SEEDS))
def test_idx_mutated_files(data: bytes) -> None:
    _idx_ok_or_data_error(data)


@FUZZ
@given(st.binary(max_size=200))
def test_cifar_random_bytes(data: bytes) -> None:
    _cifar_ok_or_data_error(data)


@FUZZ
@given(mutated(PICKLES))
def test_cifar_mutated_files(data: bytes) -> None:
    _cifar_ok_or_data_error(data)
