"""torchrun with 2 processes on the CPU (gloo) against one process: the same global batches give the same weights,
evaluation is sharded and gathered in order, rank 0 alone writes each file, CP-CNN-style components spread over the
ranks, and a run SIGKILLed mid-epoch and resumed ends where an uninterrupted run ends.

Every launch uses `--standalone` (rendezvous on a free port) and a timeout that kills the whole process group, so a
hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dynacnn.runs import load_run
from dynacnn.train import fit, predict

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker as worker  # noqa: E402  (the worker script's models and data)

WORKER = Path(__file__).with_name("ddp_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMEOUT_S = 240
WORLD = 2
COMPONENT_OWNERS = {0: 0, 1: 1, 2: 0, 3: 0}
"""Components 0-2 (as many as ranks or more) are trained on rank item % 2; component 3 alone by both, rank 0 writing."""


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node 2 ARGS`; the process group is killed on timeout."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), *args]
    process = subprocess.Popen(
        argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"torchrun {' '.join(args)} did not finish in {TIMEOUT_S} s (a hang)")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def check(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One torchrun of the worker's suite: what each rank held at the end, by rank."""
    out = tmp_path_factory.mktemp("ddp")
    check(torchrun(str(WORKER), "suite", str(out)))
    return out, [torch.load(out / "ranks" / f"{rank}.pt", weights_only=False) for rank in range(WORLD)]


def assert_close_states(found: dict, expected: dict, exact: bool = False) -> None:
    assert found.keys() == expected.keys()
    for key in expected:
        if exact:
            assert torch.equal(found[key], expected[key]), key
        else:
            torch.testing.assert_close(found[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def assert_close_histories(found: list[dict], expected: list[dict]) -> None:
    assert len(found) == len(expected)
    for row, reference in zip(found, expected):
        assert row.keys() == reference.keys()
        for key in reference:
            if key != "images_per_s":
                assert row[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), key


class PerRankBatchNorm(nn.Module):
    """One process computing what DDP's ranks compute with plain BatchNorm: each rank's rows of a batch (the same
    split as `distributed.shard`) normalised by their own statistics; the running statistics are rank 0's."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.inner(x)
        base, extra = divmod(len(x), WORLD)
        sizes = [base + (rank < extra) for rank in range(WORLD)]
        parts = [self.inner(x[: sizes[0]])]
        kept = [buffer.clone() for buffer in self.inner.buffers()]
        for rank in range(1, WORLD):
            if sizes[rank]:
                start = sum(sizes[:rank])
                parts.append(self.inner(x[start : start + sizes[rank]]))
        for buffer, value in zip(self.inner.buffers(), kept):
            buffer.data.copy_(value)  # not a change autograd tracks: training-mode BatchNorm's backward ignores it
        return torch.cat(parts)


def test_same_global_batches_give_the_weights_of_one_process(suite):
    _, ranks = suite
    model = worker.plain_model()
    reference = fit(model, worker.train_data(), worker.CONFIG, calib_data=worker.eval_data(), device="cpu")
    for held in ranks:
        assert held["world"] == WORLD
        assert_close_states(held["plain"]["weights"], model.state_dict())
        assert_close_histories(held["plain"]["history"], reference.history)
    assert not torch.equal(model[0].weight, worker.plain_model()[0].weight), "training changed nothing"


def test_batchnorm_normalises_each_rank_over_its_own_rows(suite):
    """Plain DDP semantics on the CPU (no SyncBatchNorm there): per-rank batch statistics, rank 0's running ones."""
    _, ranks = suite
    model = worker.bn_model()
    reference = fit(
        PerRankBatchNorm(model), worker.train_data(), worker.CONFIG, calib_data=worker.eval_data(), device="cpu"
    )
    whole_batch = worker.bn_model()
    fit(whole_batch, worker.train_data(), worker.CONFIG, device="cpu")
    for held in ranks:
        assert_close_states(held["bn"]["weights"], model.state_dict())
        assert_close_histories(held["bn"]["history"], reference.history)
    assert not torch.allclose(whole_batch[0].weight, model[0].weight, atol=1e-4), "the reference must tell them apart"


def test_evaluation_is_sharded_and_gathered_in_order(suite):
    _, ranks = suite
    logits, labels = predict(worker.plain_model(), worker.eval_data(), torch.device("cpu"))
    for held in ranks:
        torch.testing.assert_close(held["predict"][0], logits, rtol=1e-5, atol=1e-6)
        assert torch.equal(held["predict"][1], labels)


def test_rank_zero_alone_writes_each_file_and_each_component_its_own_rank(suite):
    out, ranks = suite
    runs = (out / "runs").resolve()
    writers: dict[str, set[int]] = {}
    for held in ranks:
        for _, path in held["log"]:
            writers.setdefault(str(Path(path).relative_to(runs)), set()).add(held["rank"])
    renamed = {str(Path(path).relative_to(runs)) for _, path in ranks[0]["log"] if _ == "rename"}
    for name in ("plain", "bn"):
        assert {f"{name}/checkpoint.pt", f"{name}/metrics.jsonl", f"{name}/metrics.json"} <= renamed
    assert {"choices.json", "components/c3.safetensors", "straight/final.safetensors"} <= renamed
    for path, who in writers.items():
        component = re.match(r"components/\.?c(\d)", path)
        owner = COMPONENT_OWNERS[int(component[1])] if component else 0
        assert who == {owner}, f"{path} written by ranks {sorted(who)}, expected only {owner}"
    assert any(path.startswith("components/c1") for path in writers), "rank 1 trained no component"


def test_components_are_spread_over_ranks_and_gathered_everywhere(suite, tmp_path):
    _, ranks = suite
    expected = [worker.train_component(item, tmp_path) for item in range(4)]
    for held in ranks:
        assert [rank for rank, *_ in held["components"]] == [0, 1, 0]
        for (_, weights, history), (reference, reference_history) in zip(held["components"], expected):
            assert_close_states(weights, reference, exact=True)
            assert_close_histories(history, reference_history)
        (rank, weights, history), (reference, reference_history) = held["together"][0], expected[3]
        assert rank == held["rank"], "fewer components than ranks: every rank trains it, data-parallel"
        assert_close_states(weights, reference)
        assert_close_histories(history, reference_history)


def test_a_failure_on_one_rank_is_raised_on_every_rank(suite):
    _, ranks = suite
    assert [held.get("error") for held in ranks] == ["item 1 is refused"] * WORLD


def test_choices_made_by_timing_are_rank_zeros(suite):
    _, ranks = suite
    assert [held["remembered"] for held in ranks] == [0] * WORLD


def test_killed_mid_epoch_and_resumed_ends_where_an_uninterrupted_run_ends(suite, tmp_path):
    straight, killed = suite[0] / "runs" / "straight", tmp_path / "killed"
    steps = -(-worker.KILL_SAMPLES // worker.KILL_CONFIG.batch_size)
    crashed = torchrun(str(WORKER), "train", str(killed), "--kill-at", str(steps + steps // 2))
    assert crashed.returncode != 0, "rank 1 should have been killed"
    assert "exitcode  : -9" in crashed.stderr, crashed.stderr[-2000:]
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"] == 1, "killed in the second epoch"
    assert not (killed / "final.safetensors").exists()
    check(torchrun(str(WORKER), "train", str(killed), "--resume"))
    assert_close_states(load_file(killed / "final.safetensors"), load_file(straight / "final.safetensors"), exact=True)
    found, expected = (json.loads((run / "metrics.json").read_text()) for run in (killed, straight))
    assert found["world_size"] == expected["world_size"] == WORLD
    assert_close_histories(found["history"], expected["history"])


@pytest.fixture(scope="module")
def torchrun_train(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("torchrun") / "base"
    args = ["--data", "synthetic", "--train-limit", "60", "--width", "0.0625", "--epochs", "1", "--batch-size", "16"]
    return out, check(torchrun("-m", "dynacnn", "train", *args, "--out", str(out), "--device", "cpu"))


def test_cli_train_under_torchrun(torchrun_train):
    out, done = torchrun_train
    assert done.stdout.count("calibration top-1") == 1, "rank 0 alone prints"
    run = load_run(out)
    assert run.meta["world_size"] == WORLD
    assert json.loads((out / "metrics.json").read_text())["world_size"] == WORLD
    assert sorted(path.name for path in out.iterdir()) == sorted(
        ["checkpoint.pt", "metrics.json", "metrics.jsonl", "model.safetensors", "run.json", "splits.json"]
    )


def test_cli_cpcnn_under_torchrun_decides_alike_on_every_rank(torchrun_train, tmp_path):
    """The conversion checks for files (clusters, finished components) before it writes them: every rank must
    decide alike, or one waits at a write the other skipped (a hang this test would time out on)."""
    run, _ = torchrun_train
    out = tmp_path / "cpcnn"
    options = ["--hyper-classes", "2", "--split", "layer1", "--configs", "LC,LP", "--epochs", "1", "--max-drop", "100"]
    args = ["--run", str(run), "--out", str(out), *options, "--memory-format", "contiguous", "--device", "cpu"]
    done = check(torchrun("-m", "dynacnn", "--", "cpcnn", *args))
    assert done.stdout.count("CP-CNN tau") == 1, "rank 0 alone prints"
    assert json.loads((out / "cpcnn.json").read_text())["configs"]["clustifier"] in ("LC", "LP")
    assert (out / "clusters.json").exists() and (out / "cpcnn.safetensors").exists()
