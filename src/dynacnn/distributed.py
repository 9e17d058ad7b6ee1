"""Data-parallel training across the processes `torchrun` starts: PyTorch's own engine (torch.distributed, DDP).

`init_from_env()` joins the process group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (gloo for CPU
tensors, NCCL for CUDA ones, the GPU of LOCAL_RANK); in a plain process every helper here is a no-op, so the same
code runs in one process or in many. Every rank runs the whole command; `dynacnn.io` lets rank 0 alone write each
file and then waits for it (`barrier`), so a file read after a write is the same file on every rank (with several
nodes: the output directory on a shared file system). The pieces `train.fit` uses:

- `shard(n)`: this rank's contiguous rows of a global batch of n, the first n % world ranks one row more;
  `loss_scale` weights its mean loss so that DDP's average of the gradients is the gradient of the whole batch.
- `data_parallel(model)`: DistributedDataParallel around the model while it trains (SyncBatchNorm on CUDA, where
  torch implements it; on the CPU each rank normalises over its own rows, and rank 0's running statistics are the
  model's), the plain modules again afterwards.
- `gather_rows`: sharded evaluation gathered back into the original order.
- `map_components`: independent parts (CP-CNN heads and clustifiers, given S) trained one per rank, each rank alone
  (`solo`), when there are at least as many parts as ranks; otherwise each part data-parallel on all ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dynacnn.errors import ConfigError, DynacnnError

T = TypeVar("T")
R = TypeVar("R")

BACKEND = "cpu:gloo,cuda:nccl"
"""Collectives on CPU tensors go through gloo, on CUDA tensors through NCCL (one process group for both)."""

_solo_depth = 0


def init_from_env() -> bool:
    """Join torchrun's process group when WORLD_SIZE > 1 (idempotent); return whether this is a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch was built without torch.distributed; run one process")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local < gpus:
        torch.cuda.set_device(local)
    dist.init_process_group(BACKEND if gpus else "gloo")
    return True


def destroy() -> None:
    """Leave the process group (at the end of a distributed run; a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return _solo_depth == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes training together (1 in a plain process and inside `solo`)."""
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    """This process's rank among `world_size()` (0 in a plain process and inside `solo`)."""
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    """Whether this process writes files and logs: rank 0, a plain process, or any rank inside `solo`."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here."""
    if _active():
        dist.barrier()


@contextmanager
def solo() -> Iterator[None]:
    """Within the block this process works alone: a world of one that writes its own files and syncs with no one."""
    global _solo_depth
    _solo_depth += 1
    try:
        yield
    finally:
        _solo_depth -= 1


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` (any picklable value) on every rank; `obj` itself in one process."""
    if not _active():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's `obj` (picklable), in rank order."""
    if not _active():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of `tensor` (in place, returned)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` concatenated along dim 0 in rank order; the ranks' first dimensions may differ."""
    if not _active():
        return tensor
    sizes = [int(size) for size in all_gather_objects(tensor.shape[0])]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def shard(n: int) -> slice:
    """This rank's rows of a global batch of `n`: a contiguous block; the first n % world ranks get one more row."""
    world, me = world_size(), rank()
    base, extra = divmod(n, world)
    start = me * base + min(me, extra)
    return slice(start, start + base + (me < extra))


def check_batch_size(batch_size: int) -> None:
    """Refuse a global batch of fewer images than processes (every step would have idle ranks)."""
    if batch_size < world_size():
        raise ConfigError(
            f"batch size {batch_size} is smaller than the {world_size()} processes torchrun started; "
            "use a batch of at least one image per process"
        )


def loss_scale(n: int) -> float:
    """The factor on this rank's mean loss over its `shard(n)` rows that makes DDP's gradient average (a mean over
    ranks) equal the gradient of the mean loss over all n rows: world * rows / n (1.0 in one process)."""
    rows = shard(n)
    return world_size() * (rows.stop - rows.start) / n


def take_rows(batch: Any, rows: slice) -> Any:
    """`batch[rows]` for a tensor, element-wise for tuples and lists of tensors (e.g. (features, teacher logits))."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(take_rows(part, rows) for part in batch)
    return batch[rows]


def local_batch(inputs: Any, labels: torch.Tensor) -> tuple[Any, torch.Tensor, float]:
    """This rank's (inputs, labels) of a global batch and the scale of its loss (`loss_scale`).

    A rank whose shard is empty (a last batch of fewer rows than ranks) gets the batch's first row with scale 0: it
    still runs the forward and backward pass DDP's gradient reduction waits for, and adds nothing to the gradient."""
    n = labels.shape[0]
    rows = shard(n)
    scale = loss_scale(n)
    if rows.start == rows.stop:
        rows = slice(0, 1)
    return take_rows(inputs, rows), labels[rows], scale


def gather_rows(local: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows computed by every rank, each placed at its global position (`positions`, one per local row)."""
    values, where = all_gather_cat(local), all_gather_cat(positions.to(local.device))
    ordered = torch.empty_like(values)
    ordered[where] = values
    return ordered


def sharded_map(
    fn: Callable[[Any], torch.Tensor], batches: Iterable[tuple[Any, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fn` over every (inputs, labels) batch, each rank on its `shard`: (all outputs in order, all labels) on every
    rank. A rank whose shard of a batch is empty runs `fn` on a stand-in row and drops the result."""
    outputs, all_labels, positions, offset = [], [], [], 0
    for inputs, labels in batches:
        rows = shard(len(labels))
        count = rows.stop - rows.start
        outputs.append(fn(take_rows(inputs, rows if count else slice(0, 1)))[:count])
        positions.append(torch.arange(rows.start, rows.stop, device=labels.device) + offset)
        offset += len(labels)
        all_labels.append(labels)
    return gather_rows(torch.cat(outputs), torch.cat(positions)), torch.cat(all_labels)


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, so that every rank holds the same model."""
    if not _active():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def sync_batchnorm_layers(model: nn.Module, device_type: str = "cuda") -> list[tuple[nn.Module, str, nn.Module]]:
    """Swap every BatchNorm layer on `device_type` for a SyncBatchNorm sharing its parameters and buffers; return
    (parent, name, original) to swap back. `data_parallel` leaves CPU layers alone: torch's SyncBatchNorm (2.14
    included) refuses CPU tensors, it synchronises on accelerators only."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.modules.batchnorm._BatchNorm) or isinstance(child, nn.SyncBatchNorm):
                continue
            tensors = [*child.parameters(), *child.buffers()]
            if not tensors or tensors[0].device.type != device_type:
                continue
            synced = nn.SyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            synced.weight, synced.bias = child.weight, child.bias
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(synced, key, getattr(child, key))
            synced.train(child.training)
            setattr(parent, name, synced)
            swapped.append((parent, name, child))
    return swapped


@contextmanager
def data_parallel(model: nn.Module) -> Iterator[nn.Module]:
    """`model` as every rank trains it: DistributedDataParallel (rank 0's weights and buffers on every rank at the
    start, gradients averaged in each backward pass, rank 0's buffers before each forward pass); `model` itself in
    one process. On exit the model holds its own modules again (BatchNorm, no DDP wrapper), in sync on every rank."""
    if not _active():
        yield model
        return
    swapped = sync_batchnorm_layers(model)
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)  # buffers synced before each forward
    try:
        yield wrapped
    finally:
        del wrapped
        for parent, name, original in swapped:
            setattr(parent, name, original)
    sync_buffers(model)


def map_components(fn: Callable[[T], R], items: Sequence[T], device: torch.device | str = "cpu") -> list[R]:
    """`[fn(item) for item in items]` on every rank, spread over the ranks when the items are independent.

    With at least as many items as ranks, rank r runs items r, r + world, ... alone (`solo`: its own training, its own
    files) and the results (picklable: modules, tensors, containers of them) are gathered through the CPU and moved
    to `device` on every rank; with fewer, every rank runs every item together (data-parallel inside `fn`). A failure
    on one rank is raised on every rank."""
    world = world_size()
    if world == 1 or len(items) < world:
        return [fn(item) for item in items]
    mine: dict[int, Any] = {}
    own_error: Exception | None = None
    ours = range(rank(), len(items), world)
    with solo():
        for index in ours:
            try:
                mine[index] = _moved(fn(items[index]), torch.device("cpu"))
            except Exception as exc:  # raised below, after every rank has reported
                own_error, mine[index] = exc, _Failure(exc)
                break
    results = {index: value for part in all_gather_objects(mine) for index, value in part.items()}
    if own_error is not None:
        raise own_error
    for _, value in sorted(results.items()):
        if isinstance(value, _Failure):
            raise value.error()
    return [_moved(results[index], torch.device(device)) for index in range(len(items))]


def _moved(value: Any, device: torch.device) -> Any:
    """`value` with its modules and tensors on `device` (modules in place), through dicts, lists and tuples."""
    if isinstance(value, (nn.Module, torch.Tensor)):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _moved(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(item, device) for item in value)
    return value


class _Failure:
    """An exception raised on another rank, as its message (a user error keeps its type; tracebacks do not travel)."""

    def __init__(self, exc: Exception) -> None:
        user_error = isinstance(exc, DynacnnError)
        self.kind = type(exc) if user_error else RuntimeError
        self.message = str(exc) if user_error else f"another rank failed: {type(exc).__name__}: {exc}"

    def error(self) -> Exception:
        return self.kind(self.message)
