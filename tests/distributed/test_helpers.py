"""dynacnn.distributed in one process: the sharding arithmetic for any world size, the SyncBatchNorm swap, and
every helper a no-op without torchrun (test_distributed.py runs them with 2 processes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from dynacnn import distributed


@contextmanager
def pretend(world: int, rank: int) -> Iterator[None]:
    """The sharding helpers as rank `rank` of `world` processes would see them."""
    with (
        mock.patch.object(distributed, "world_size", lambda: world),
        mock.patch.object(distributed, "rank", lambda: rank),
    ):
        yield


@given(n=st.integers(1, 300), world=st.integers(1, 16))
def test_shards_split_a_batch_in_order_evenly_and_scale_to_its_mean(n, world):
    slices, scales = [], []
    for rank in range(world):
        with pretend(world, rank):
            slices.append(distributed.shard(n))
            scales.append(distributed.loss_scale(n))
    assert slices[0].start == 0 and slices[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:])), "contiguous, in rank order"
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1 and sizes[0] >= 1, "balanced; rank 0 always has a row"
    # DDP averages over ranks: sum_r scale_r * (mean over rank r's rows) / world = mean over all n rows
    rows = torch.rand(n, dtype=torch.float64)
    ddp = sum(scale * rows[s].mean() for scale, s in zip(scales, slices) if s.stop > s.start) / world
    assert torch.isclose(ddp, rows.mean())


def test_a_rank_with_no_rows_gets_a_stand_in_row_of_scale_zero():
    with pretend(4, 3):
        inputs, labels, scale = distributed.local_batch((torch.arange(2.0), torch.arange(2.0) + 10), torch.arange(2))
    assert scale == 0 and torch.equal(labels, torch.tensor([0])) and torch.equal(inputs[1], torch.tensor([10.0]))


def test_one_process_is_a_world_of_one():
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.init_from_env() is False
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.map_components(lambda item: item * 2, [1, 2, 3]) == [2, 4, 6]
    inputs, labels, scale = distributed.local_batch(torch.ones(5, 2), torch.arange(5))
    assert scale == 1.0 and len(inputs) == len(labels) == 5
    outputs, gathered = distributed.sharded_map(lambda x: x * 2, [(torch.arange(3.0), torch.arange(3))] * 2)
    assert torch.equal(outputs, torch.arange(3.0).repeat(2) * 2) and torch.equal(gathered, torch.arange(3).repeat(2))
    model = nn.Linear(2, 2)
    with distributed.data_parallel(model) as trained:
        assert trained is model


def test_sync_batchnorm_swap_shares_the_tensors_and_restores_the_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4)))
    model(torch.randn(4, 3, 6, 6))  # running statistics away from their initial values
    model.eval()
    originals = [model[1], model[2][1]]
    expected = model(torch.ones(2, 3, 6, 6))
    swapped = distributed.sync_batchnorm_layers(model, device_type="cpu")
    assert [type(model[1]), type(model[2][1])] == [nn.SyncBatchNorm] * 2 and len(swapped) == 2
    for layer, original in zip((model[1], model[2][1]), originals):
        assert layer.weight is original.weight and layer.running_mean is original.running_mean
    assert torch.equal(model(torch.ones(2, 3, 6, 6)), expected), "eval mode needs no process group"
    assert distributed.sync_batchnorm_layers(nn.Sequential(nn.BatchNorm2d(2))) == [], "CPU layers: not on CUDA"
    for parent, name, original in swapped:
        setattr(parent, name, original)
    assert [model[1], model[2][1]] == originals
