"""The worker that test_distributed.py starts under torchrun (2 processes, gloo), and the tiny models and data that
both sides build.

    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_worker.py suite OUT
    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_worker.py train OUT [--resume] [--kill-at N]

`suite` trains and evaluates everything the equivalence tests compare with one process, and the uninterrupted run
of the kill test (OUT/runs/straight), with every write of each rank under OUT/runs recorded by an audit hook; each
rank leaves what it holds in OUT/ranks/<rank>.pt. `train` is the resumable run of the kill test; with `--kill-at N`,
rank 1 SIGKILLs itself at its N-th training forward pass.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

from dynacnn import distributed
from dynacnn.errors import ConfigError
from dynacnn.runs import remembered, save_weights
from dynacnn.train import TensorBatches, TrainConfig, fit, predict

CONFIG = TrainConfig(epochs=2, batch_size=5, lr=0.05, schedule="cosine", augment=False, seed=3)
SAMPLES = 16
"""Global batches of 5, 5, 5 and 1 rows: shards of 3 + 2 (uneven) and of 1 + a stand-in row."""
KILL_CONFIG = TrainConfig(epochs=3, batch_size=8, lr=0.05, schedule="onecycle", augment=False, seed=5)
KILL_SAMPLES = 44


def tensors(samples: int, seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(samples, 3, size, size, generator=generator), torch.randint(
        0, 4, (samples,), generator=generator
    )


def train_data(samples: int = SAMPLES, batch_size: int = CONFIG.batch_size, seed: int = 0) -> TensorBatches:
    return TensorBatches(*tensors(samples, seed), batch_size, shuffle=True)


def eval_data(samples: int = 7, batch_size: int = 3) -> TensorBatches:
    """Batches of 3, 3 and 1 rows (the last one: a stand-in row on rank 1)."""
    return TensorBatches(*tensors(samples, 1), batch_size)


def plain_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 4),
    )


def component_data(item: int) -> TensorBatches:
    generator = torch.Generator().manual_seed(100 + item)
    return TensorBatches(torch.randn(12, 6, generator=generator), torch.randint(0, 3, (12,), generator=generator), 4)


def train_component(item: int, runs: Path) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """A stand-in for a CP-CNN head: its own seed, data and run directory; saved as components/c<item>."""
    torch.manual_seed(item)
    module = nn.Linear(6, 3)
    config = TrainConfig(epochs=2, batch_size=4, lr=0.1, schedule="cosine", augment=False, seed=item)
    result = fit(module, component_data(item), config, run_dir=runs / "components" / f"c{item}", device="cpu")
    save_weights(runs / "components" / f"c{item}.safetensors", module)
    return module.state_dict(), result.history


def refuse_one(item: int) -> int:
    if item == 1:
        raise ConfigError("item 1 is refused")
    return item


def audit_writes(root: Path, log: list[tuple[str, str]]) -> None:
    """Record ("open" | "rename", path) for every file this process opens for writing or renames under `root`."""
    prefix = str(root.resolve())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, os.PathLike)):
            mode, flags = args[1], args[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & write_flags)
            if writing and os.path.abspath(args[0]).startswith(prefix):
                log.append(("open", os.path.abspath(args[0])))
        elif event == "os.rename" and os.path.abspath(args[1]).startswith(prefix):
            log.append(("rename", os.path.abspath(args[1])))

    sys.addaudithook(hook)


def suite(out: Path) -> None:
    runs, log = out / "runs", []
    runs.mkdir(parents=True, exist_ok=True)
    audit_writes(runs, log)
    held: dict[str, object] = {"rank": distributed.rank(), "world": distributed.world_size()}
    for name, build in (("plain", plain_model), ("bn", bn_model)):
        model = build()
        result = fit(model, train_data(), CONFIG, calib_data=eval_data(), run_dir=runs / name, device="cpu")
        save_weights(runs / name / "final.safetensors", model)
        held[name] = {"weights": model.state_dict(), "history": result.history}
    held["predict"] = predict(plain_model(), eval_data(), torch.device("cpu"))
    rank = distributed.rank()
    held["components"] = distributed.map_components(lambda item: (rank, *train_component(item, runs)), [0, 1, 2])
    held["together"] = distributed.map_components(lambda item: (rank, *train_component(item, runs)), [3])
    try:
        distributed.map_components(refuse_one, [0, 1])
    except ConfigError as exc:
        held["error"] = str(exc)
    held["remembered"] = remembered(runs / "choices.json", "rank", {}, False, distributed.rank)
    train(runs / "straight", resume=False, kill_at=None)
    held["log"] = log
    (out / "ranks").mkdir(exist_ok=True)
    torch.save(held, out / "ranks" / f"{rank}.pt")


def train(out: Path, resume: bool, kill_at: int | None) -> None:
    model = bn_model()
    if kill_at is not None and distributed.rank() == 1:
        calls = []

        def die(module: nn.Module, args: tuple) -> None:
            calls.append(module.training)
            if sum(calls) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        model.register_forward_pre_hook(die)
    data = train_data(KILL_SAMPLES, KILL_CONFIG.batch_size)
    fit(model, data, KILL_CONFIG, calib_data=eval_data(), run_dir=out, resume=resume, device="cpu")
    save_weights(out / "final.safetensors", model)


if __name__ == "__main__":
    distributed.init_from_env()
    mode, target = sys.argv[1], Path(sys.argv[2])
    if mode == "suite":
        suite(target)
    else:
        kill = int(sys.argv[sys.argv.index("--kill-at") + 1]) if "--kill-at" in sys.argv else None
        train(target, "--resume" in sys.argv, kill)
    distributed.destroy()
