"""The CP-CNN of §3 (Fig. 1): shared part S, clustifier M and hyper-class heads H_g, with real routed inference.

`model(x)` returns the (B, K) class probabilities, like any classifier; `model.route(x)` returns them with the
routing details (`RoutedOutput`: probabilities, MACs each image executed, its active heads). The route runs S
once per image and M on every image, chooses each image's active heads with Alg. 1 / Eq. 1 (`activate`), then
runs each head once on the sub-batch of the images that activate it (one gather, `features[rows]`, which keeps
a channels_last layout), and writes its weighted probabilities (Eq. 3) into the (B, K) output with one indexed
assignment: the hyper-classes partition the classes, so no two heads write the same column. There is no
per-image Python; the only loop is over the G heads. A head that no image activates costs nothing.

The MACs each image executed come from a cost table counted once for one image with `dynacnn.flops`:
S + M + the sum of its active heads. `count_call_macs(model, x)` measures the same total from the ops
that actually ran (tests check the equality).

Levels (Fig. 1 bottom, "Steps 1 and 2 could be repeated"): a head may itself be a `CPCNN` on S's output, with its
own S', M', heads and tau; its members index the parent hyper-class's classes. Its cost-table entry is S' + M', and
each image routed to it adds the MACs of the sub-heads it activates there (`route` and `forward_dense` recurse).

Speed: run it under the memory format its weights are in (`.to(memory_format=torch.channels_last)` and
channels_last inputs on CPU, where oneDNN is several times faster for these small convolutions); the routing is
not differentiable and runs without autograd. Under `torch.autocast` the networks run in reduced precision and
the probabilities and the routing are computed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from dynacnn.cpcnn.policy import DEFAULT_RULE, DEFAULT_WEIGHTING, activate, check_policy, check_tau, merge
from dynacnn.errors import ConfigError
from dynacnn.flops import count_macs
from dynacnn.routing import activate_one


def on_device_of(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` on the device of `module`'s first parameter (MACs do not depend on the device; parts may sit apart)."""
    param = next(module.parameters(), None)
    return x if param is None else x.to(param.device)


class TrivialHead(nn.Module):
    """The head of a single-class hyper-class: no computation, probability 1 for its class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 1)


DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
"""Probability dtypes whose one-image policy runs in plain Python (`dynacnn.routing`), with its rounding type."""


class RoutedOutput(NamedTuple):
    """What `CPCNN.route` returns: class probabilities (B, K), MACs each image executed (B,), active heads (B, G)."""

    probs: torch.Tensor
    macs: torch.Tensor
    active: torch.Tensor


def check_members(members: Sequence[Sequence[int]], num_classes: int | None = None) -> list[list[int]]:
    """Refuse hyper-classes that do not partition the classes 0..K-1."""
    groups = [sorted(int(c) for c in group) for group in members]
    flat = sorted(c for group in groups for c in group)
    if len(groups) < 1 or any(not group for group in groups) or flat != list(range(len(flat))):
        raise ConfigError(
            "hyper-classes must be non-empty and partition the classes 0..K-1 (each class in exactly one)"
        )
    if num_classes is not None and len(flat) != num_classes:
        raise ConfigError(
            f"the hyper-classes cover {len(flat)} classes but the model has {num_classes}; re-cluster for this model"
        )
    return groups


class CPCNN(nn.Module):
    """§3 CP-CNN: S once, M, then each H_g only on the images whose Alg. 1 activation set contains g.

    `forward(x)` -> (B, K) class probabilities; `route(x)` -> `RoutedOutput` (probabilities, MACs, active heads)."""

    def __init__(
        self,
        shared: nn.Module,
        clustifier: nn.Module,
        heads: Sequence[nn.Module],
        members: Sequence[Sequence[int]],
        confusion: torch.Tensor,
        input_shape: Sequence[int],
        *,
        tau: float = 0.9,
        rule: str = DEFAULT_RULE,
        weighting: str = DEFAULT_WEIGHTING,
    ) -> None:
        super().__init__()
        groups = check_members(members)
        if len(heads) != len(groups):
            raise ConfigError(f"{len(heads)} heads for {len(groups)} hyper-classes; give one head per hyper-class")
        if tuple(confusion.shape) != (len(groups), len(groups)):
            raise ConfigError(f"confusion must be ({len(groups)}, {len(groups)}), got {tuple(confusion.shape)}")
        self.shared = shared.eval().requires_grad_(False)
        self.clustifier = clustifier
        self.heads = nn.ModuleList(heads)
        self.members = groups
        self.num_classes = sum(len(group) for group in groups)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.set_policy(tau, rule, weighting)
        self.register_buffer("confusion", confusion.detach().double().clone())
        for index, group in enumerate(groups):
            self.register_buffer(f"members_{index}", torch.tensor(group, dtype=torch.long), persistent=False)
        self.register_buffer("head_macs", torch.zeros(len(groups), dtype=torch.long), persistent=False)
        self.fixed_macs = 0
        self.shared_macs = 0
        self.clustifier_macs = 0
        self.eval()
        self.count_costs()

    def set_policy(self, tau: float, rule: str | None = None, weighting: str | None = None) -> CPCNN:
        """Set the Alg. 1 threshold tau in (0, 1] (1 = every head) and, optionally, the rule and weighting."""
        rule = rule or self.rule
        weighting = weighting or self.weighting
        check_policy(rule, weighting)
        self.tau, self.rule, self.weighting = check_tau(tau), rule, weighting
        return self

    @torch.no_grad()
    def count_costs(self) -> None:
        """The per-component cost table: MACs of one image through S, M and each head (dynacnn.flops)."""
        x = on_device_of(self.shared, torch.zeros(1, *self.input_shape))
        self.shared_macs = count_macs(self.shared, x).macs
        features = self.shared(x)
        self.clustifier_macs = count_macs(self.clustifier, on_device_of(self.clustifier, features)).macs
        self.fixed_macs = self.shared_macs + self.clustifier_macs
        costs = []
        for g, head in enumerate(self.heads):
            if isinstance(head, CPCNN):
                if head.input_shape != tuple(features.shape[1:]) or head.num_classes != len(self.members[g]):
                    raise ConfigError(
                        f"the nested CP-CNN of hyper-class {g} takes {head.input_shape} with {head.num_classes} "
                        f"classes, but S gives {tuple(features.shape[1:])} and the hyper-class has "
                        f"{len(self.members[g])}; build it on S's output over the hyper-class's classes"
                    )
                costs.append(head.fixed_macs)
            else:
                costs.append(
                    0 if isinstance(head, TrivialHead) else count_macs(head, on_device_of(head, features)).macs
                )
        self.head_macs.copy_(torch.tensor(costs, dtype=torch.long))

    @property
    def depth(self) -> int:
        """Levels of routing: 1 for S, M and plain heads; 1 + the deepest nested CP-CNN's otherwise."""
        return 1 + max((head.depth for head in self.heads if isinstance(head, CPCNN)), default=0)

    def set_taus(self, taus: Sequence[float]) -> CPCNN:
        """A tau per level (`taus[0]` here, `taus[1]` for every nested CP-CNN, ...); levels not given keep theirs."""
        if not 1 <= len(taus) <= self.depth:
            raise ConfigError(f"{len(taus)} taus for a CP-CNN of {self.depth} level(s); give one per level")
        self.set_policy(taus[0])
        for head in self.heads:
            if isinstance(head, CPCNN) and len(taus) > 1:
                head.set_taus(taus[1:])
        return self

    def member_index(self, group: int) -> torch.Tensor:
        """Class ids (a LongTensor buffer) of hyper-class `group`."""
        return getattr(self, f"members_{group}")

    def policy(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Alg. 1 / Eq. 1 active sets and Eq. 3 weights for clustifier probabilities v (B, G); one image on the CPU
        in plain Python (`dynacnn.routing`: the same set, weights within the last bit), where torch's cost per
        call is most of the policy's time."""
        confusion = self.confusion.to(device=v.device, dtype=v.dtype)
        result = None
        if v.dim() == 2 and len(v) == 1 and v.device.type == "cpu" and v.dtype in DTYPES:
            policy = (self.tau, self.rule, self.weighting, DTYPES[v.dtype])
            result = activate_one(v[0].tolist(), confusion.tolist(), *policy)
        if result is None:
            return activate(v, confusion, self.tau, self.rule, self.weighting)
        return torch.tensor([result[0]]), torch.tensor([result[1]], dtype=v.dtype)

    def image_macs(self, active: torch.Tensor, nested: torch.Tensor | None = None) -> torch.Tensor:
        """MACs each image executes: S + M + its active heads (B,), from the cost table (no matmul: not counted),
        plus `nested` (B,): the sub-heads it ran inside nested CP-CNNs."""
        macs = self.fixed_macs + (active.long() * self.head_macs.to(active.device)).sum(1)
        return macs if nested is None else macs + nested

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, K) of the routed model (Eq. 3 merge of the active heads)."""
        return self.route(x).probs

    @torch.no_grad()
    def route(self, x: torch.Tensor) -> RoutedOutput:
        """Alg. 1 routing with real skipping: probabilities, MACs each image executed, its active heads."""
        features = self.shared(x)
        v = torch.softmax(self.clustifier(features).float(), dim=1)
        active, weights = self.policy(v)
        batch = x.shape[0]
        probs = v.new_zeros(batch, self.num_classes)
        nested = torch.zeros(batch, dtype=torch.long, device=x.device)
        counts = active.sum(0).tolist()
        for group, head in enumerate(self.heads):
            if counts[group] == 0:
                continue
            classes = self.member_index(group)
            if counts[group] == batch:
                rows = torch.arange(batch, device=x.device)
                head_input = features
            else:
                rows = active[:, group].nonzero().squeeze(1)
                head_input = features[rows]  # keeps channels_last (index_select would return NCHW)
            weight = weights[:, group].index_select(0, rows)[:, None]
            if isinstance(head, TrivialHead):
                probs[rows[:, None], classes] = weight
            elif isinstance(head, CPCNN):
                sub = head.route(head_input)
                probs[rows[:, None], classes] = sub.probs * weight
                nested[rows] += sub.macs - head.fixed_macs
            else:
                probs[rows[:, None], classes] = torch.softmax(head(head_input).float(), dim=1) * weight
        return RoutedOutput(probs, self.image_macs(active, nested), active)

    @torch.no_grad()
    def head_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Dense: clustifier probabilities v (B, G) and every head's probabilities on every image (for sweeps); a
        nested CP-CNN gives its own dense reference's probabilities."""
        v, head_probs, _ = self._dense(x)
        return v, head_probs

    @torch.no_grad()
    def _dense(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
        """v, every head's probabilities, and for each nested head the MACs of its active sub-heads per image."""
        features = self.shared(x)
        v = torch.softmax(self.clustifier(features).float(), dim=1)
        head_probs, extra = [], []
        for head in self.heads:
            if isinstance(head, CPCNN):
                sub = head.forward_dense(features)
                head_probs.append(sub.probs)
                extra.append(sub.macs - head.fixed_macs)
            else:
                head_probs.append(torch.softmax(head(features).float(), dim=1))
                extra.append(None)
        return v, head_probs, extra

    def forward_dense(self, x: torch.Tensor) -> RoutedOutput:
        """Every head on every image, merged with the same weights (zero outside the active set): the reference.
        Nested CP-CNNs run densely too; the MACs are those the routed model would execute."""
        v, head_probs, extra = self._dense(x)
        active, weights = self.policy(v)
        members = [self.member_index(g) for g in range(len(self.heads))]
        nested = torch.zeros(len(v), dtype=torch.long, device=v.device)
        for g, macs in enumerate(extra):
            if macs is not None:
                nested += active[:, g].long() * macs
        probs = merge(weights, head_probs, members, self.num_classes)
        return RoutedOutput(probs, self.image_macs(active, nested), active)
