"""Fig. 1 (bottom) of CP-CNN: the structure of a nested level, a second S' and clustifier M' inside a hyper-class.

A nested level at `sub_split` under a parent split at `split` has S' on S's output: the first block of the trained
one-level head it replaces (`head_shared`: a kept stage, or the Table 1 block replacing it, when that block ends at a
split point with the backbone's feature shape there), else frozen copies of the backbone's stages after `split` up
to `sub_split` (`shared_between`); M' and its sub-heads are built by the Table 1 flow at `sub_split`
(`build_head`), and its members index the parent hyper-class's classes. Its description (what `cpcnn_model.json`
holds in place of a head's configuration name) is a dict: {"split", "shared", "clustifier", "heads", "members",
"tau", "rule", "weighting"}; "shared" is "backbone" or "head:<configuration>", "heads" holds names or further such
dicts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dynacnn.cpcnn.compress import SPLIT_POINTS, STAGES, build_head, check_split, head_stages, stage_shapes
from dynacnn.cpcnn.heads import HyperClassHead
from dynacnn.cpcnn.model import CPCNN, TrivialHead
from dynacnn.errors import ConfigError

HeadEntry = str | Mapping[str, Any]


def next_split(split: str) -> str:
    """The split point one stage after `split`: where S' of a nested level ends by default."""
    index = SPLIT_POINTS.index(check_split(split))
    if index + 1 >= len(SPLIT_POINTS):
        raise ConfigError(
            f"S ends after {split}, leaving one stage: a second level needs S to end earlier; "
            f"use --split {' / '.join(SPLIT_POINTS[:-1])}"
        )
    return SPLIT_POINTS[index + 1]


def shared_between(backbone: nn.Module, split: str, sub_split: str) -> nn.Sequential:
    """S' of a nested level: frozen copies of the backbone's stages after `split` up to `sub_split`."""
    start, stop = SPLIT_POINTS.index(check_split(split)), SPLIT_POINTS.index(check_split(sub_split))
    if stop <= start:
        raise ConfigError(
            f"a nested level's split point {sub_split!r} must come after its parent's {split!r}; "
            f"use one of {', '.join(SPLIT_POINTS[start + 1 :]) or 'none (re-split the parent earlier)'}"
        )
    shared = nn.Sequential()
    for name in STAGES[start:stop]:
        shared.add_module(name, copy.deepcopy(getattr(backbone, name)))
    return shared.requires_grad_(False).eval()


@torch.no_grad()
def head_shared(
    backbone: nn.Module, split: str, head: nn.Module, input_shape: Sequence[int]
) -> tuple[nn.Module, str] | None:
    """S' from a trained head at `split`: a frozen copy of its first block and the split point where it ends, if it
    ends at one (not layer4) with the backbone's feature shape there (so that Table 1 sub-heads fit); else None."""
    if not isinstance(head, HyperClassHead) or not len(head.body):
        return None
    name, block = next(iter(head.body.named_children()))
    stages = name.split("_")
    if not set(stages) <= set(STAGES) or stages[-1] not in SPLIT_POINTS:
        return None
    block = copy.deepcopy(block).requires_grad_(False).eval()
    param = next(block.parameters())
    x = torch.zeros(1, *feature_shape(backbone, split, input_shape), dtype=param.dtype, device=param.device)
    if tuple(block(x).shape[1:]) != feature_shape(backbone, stages[-1], input_shape):
        return None
    return block, stages[-1]


def nested_shared(backbone: nn.Module, split: str, entry: Mapping[str, Any], input_shape: Sequence[int]) -> nn.Module:
    """An untrained S' of the description `entry`: the first block of head configuration "head:<name>", or the
    backbone's stages ("backbone", also what descriptions without "shared" mean)."""
    shared = entry.get("shared", "backbone")
    if shared == "backbone":
        return shared_between(backbone, split, entry["split"])
    if not isinstance(shared, str) or not shared.startswith("head:"):
        raise ConfigError(f"unknown S' description {shared!r}; use 'backbone' or 'head:<configuration>'")
    body = build_head(backbone, split, shared.removeprefix("head:"), 1, input_shape).body
    return next(iter(body.children())).requires_grad_(False).eval()


def feature_shape(backbone: nn.Module, split: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) of S's output for a split at `split` (the input of a nested level under it)."""
    return stage_shapes(backbone, input_shape)[head_stages(split)[0]].in_shape


def build_heads(
    backbone: nn.Module,
    split: str,
    entries: Sequence[HeadEntry],
    members: Sequence[Sequence[int]],
    input_shape: Sequence[int],
) -> list[nn.Module]:
    """Untrained heads at `split`: a configuration name, "trivial", or a nested level's description."""
    heads: list[nn.Module] = []
    for entry, group in zip(entries, members):
        if isinstance(entry, Mapping):
            heads.append(build_nested(backbone, split, entry, input_shape))
        elif entry == "trivial":
            heads.append(TrivialHead())
        else:
            heads.append(build_head(backbone, split, entry, len(group), input_shape))
    return heads


def build_nested(backbone: nn.Module, split: str, entry: Mapping[str, Any], input_shape: Sequence[int]) -> CPCNN:
    """An untrained nested CP-CNN (S', M', sub-heads) of the description `entry` under a parent split at `split`."""
    sub_split, members = entry["split"], entry["members"]
    clustifier = build_head(backbone, sub_split, entry["clustifier"], len(members), input_shape)
    heads = build_heads(backbone, sub_split, entry["heads"], members, input_shape)
    shared = nested_shared(backbone, split, entry, input_shape)
    return nested_cpcnn(backbone, split, shared, clustifier, heads, members, input_shape, entry)


def nested_cpcnn(
    backbone: nn.Module,
    split: str,
    shared: nn.Module,
    clustifier: nn.Module,
    heads: Sequence[nn.Module],
    members: Sequence[Sequence[int]],
    input_shape: Sequence[int],
    policy: Mapping[str, Any],
    confusion: torch.Tensor | None = None,
) -> CPCNN:
    """A nested CP-CNN on S's output (the parent split at `split`): the given S', M' and sub-heads, `policy`'s tau,
    rule and weighting (a zero confusion matrix unless given: `load_cpcnn` fills it from the weights)."""
    if confusion is None:
        confusion = torch.zeros(len(members), len(members))
    return CPCNN(
        shared,
        clustifier,
        heads,
        members,
        confusion,
        feature_shape(backbone, split, input_shape),
        tau=policy["tau"],
        rule=policy["rule"],
        weighting=policy["weighting"],
    )


def describe_heads(model: CPCNN, entries: Sequence[HeadEntry]) -> list[HeadEntry]:
    """`entries` with each nested level's members and policy taken from `model` (what save_cpcnn writes)."""
    described: list[HeadEntry] = []
    for head, entry in zip(model.heads, entries):
        if isinstance(head, CPCNN):
            if not isinstance(entry, Mapping):
                raise ConfigError("a nested CP-CNN head needs a description (split, clustifier, heads), not a name")
            described.append(
                {
                    **entry,
                    "heads": describe_heads(head, entry["heads"]),
                    "members": head.members,
                    "tau": head.tau,
                    "rule": head.rule,
                    "weighting": head.weighting,
                }
            )
        else:
            described.append(entry)
    return described
