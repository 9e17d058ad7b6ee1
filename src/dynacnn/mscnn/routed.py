"""An MS-CNN with its run-time policy as one module: `model(x)` gives (B, K) probabilities, skipping work for real.

`EarlyExitMSCNN(network, policy)` executes a policy of any family: full, TP (Alg. 1), CAP_FC (Alg. 2) and PTHP
(Alg. 4) through `execute` (exited images leave the batch, pruned FC rows are never computed), and CAP_CONV (Alg. 3,
a `CapConvPolicy`) through `execute_cap_conv` (each later stage's last CONV layer computes only the filters the
image's vote keeps; it needs the filter ranking `filter_importance` made on training images). `route(x)`
returns the details as `ExitOutput`, whose `probs` and `macs` mean what they mean in the CP-CNN's `RoutedOutput`.
Per-image MACs come from the stage cost table (`measure_costs`, counted once per input shape with
`dynacnn.flops`), which equals what the flop counter sees run. `network` is the bare `MSCNN` (its forward returns
every stage's logits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from dynacnn.errors import ConfigError
from dynacnn.mscnn.cap_conv import FilterImportance, check_rm, execute_cap_conv
from dynacnn.mscnn.costs import CostModel, measure_costs
from dynacnn.mscnn.execute import FC_ROWS, execute
from dynacnn.mscnn.model import MSCNN
from dynacnn.mscnn.policies import Decision, Policy, full_policy


class ExitOutput(NamedTuple):
    """What `EarlyExitMSCNN.route` returns: probabilities of each image's exit stage (B, K; classes that stage did not
    compute: 0), MACs each image executed (B,), its exit stage (B,; 0-based) and the number of classes each stage's
    last FC layer computed for it (B, S; 0: the stage did not run)."""

    probs: torch.Tensor
    macs: torch.Tensor
    exit_stage: torch.Tensor
    kept: torch.Tensor


@dataclass(frozen=True)
class CapConvPolicy:
    """Alg. 3 CAP_CONV: stage i's top-P_th[i] classes vote the rm filters that stage i+1's last CONV layer skips
    (`smart`; otherwise the rm filters least important to all classes together)."""

    p_th: tuple[int, ...]
    rm: int
    smart: bool = True
    kind: ClassVar[str] = "CAP_CONV"

    def settings(self) -> dict[str, Any]:
        """JSON-ready settings, as mscnn.json records them."""
        return {"p_th": list(self.p_th), "rm": self.rm, **({} if self.smart else {"smart": False})}


def chosen_policy(chosen: Mapping[str, Any], num_stages: int, num_classes: int) -> Policy | CapConvPolicy:
    """The policy of an operating point as mscnn.json records it ({"policy": name, "settings": {...}}); the family is
    told by the settings' keys (CAP_CONV: rm; PTHP: s_th, or d_ct with p_th (exits with Eq. 1's pruning); TP: d_ct;
    CAP_FC: p_th; none: full)."""
    settings = chosen["settings"]
    if chosen.get("policy") == "CAP_CONV" or "rm" in settings:
        return CapConvPolicy(tuple(settings["p_th"]), settings["rm"], settings.get("smart", True))
    hybrid = "s_th" in settings or {"d_ct", "p_th"} <= set(settings)
    kind = "PTHP" if hybrid else "TP" if "d_ct" in settings else "CAP_FC" if "p_th" in settings else "full"
    return Policy(
        kind,
        num_stages,
        num_classes,
        d_ct=tuple(settings["d_ct"]) if "d_ct" in settings else None,
        top_c=settings.get("top_c", 5),
        p_th=tuple(settings["p_th"]) if "p_th" in settings else None,
        s_th=tuple(settings["s_th"]) if "s_th" in settings else None,
        stop_size=settings.get("stop_size", 0),
    )


def check_cap_conv(network: MSCNN, policy: CapConvPolicy, filter_order: FilterImportance | None) -> None:
    """Refuse CAP_CONV settings the network cannot run: P_th per stage 1..N-1 in 1..K, rm below every later stage's
    filter count, and a filter ranking of this network's shape."""
    stages, classes = network.num_stages, network.config.num_classes
    if len(policy.p_th) != stages - 1 or not all(isinstance(p, int) and 1 <= p <= classes for p in policy.p_th):
        raise ConfigError(
            f"CAP_CONV P_th {list(policy.p_th)} needs {stages - 1} integers in 1..{classes} (one per stage 1..N-1)"
        )
    for stage in range(1, stages):
        check_rm(policy.rm, network.config.stages[stage].last)
    if filter_order is None:
        raise ConfigError(
            "CAP_CONV needs the filter ranking: pass filter_order=filter_importance(network, training outputs)"
        )
    shapes = [tuple(order.shape) for order in filter_order.per_class]
    expected = [(classes, stage.last) for stage in network.config.stages]
    if shapes != expected:
        raise ConfigError(f"the filter ranking has shapes {shapes} but this network needs {expected}; rank its filters")


class EarlyExitMSCNN(nn.Module):
    """Fig. 1 MS-CNN under one run-time policy (Alg. 1-4) with real skipping: forward(x) -> (B, K) probabilities.

    `fc_rows` chooses how a partial class mask computes the last FC layer (see `execute`); `input_shape` (C, H, W)
    counts the cost table now (otherwise on the first call of each shape, which a surrounding flop counter would see).
    """

    def __init__(
        self,
        network: MSCNN,
        policy: Policy | CapConvPolicy | None = None,
        *,
        fc_rows: str = "image",
        filter_order: FilterImportance | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        stages, classes = network.num_stages, network.config.num_classes
        policy = full_policy(stages, classes) if policy is None else policy
        if isinstance(policy, CapConvPolicy):
            check_cap_conv(network, policy, filter_order)
        elif (policy.num_stages, policy.num_classes) != (stages, classes):
            raise ConfigError(
                f"the policy is for {policy.num_stages} stages x {policy.num_classes} classes but the network has "
                f"{stages} x {classes}"
            )
        if fc_rows not in FC_ROWS:
            raise ConfigError(f"fc_rows {fc_rows!r} must be one of {', '.join(FC_ROWS)}")
        self.network = network.eval()
        self.policy = policy
        self.fc_rows = fc_rows
        self.filter_order = filter_order
        self._costs: dict[tuple[int, ...], CostModel] = {}
        if input_shape is not None:
            self.cost_model(input_shape)
        self.eval()

    def cost_model(self, input_shape: Sequence[int]) -> CostModel:
        """The stage cost table for images of `input_shape` (C, H, W), counted once with `dynacnn.flops`."""
        key = tuple(int(d) for d in input_shape)
        if key not in self._costs:
            self._costs[key] = measure_costs(self.network, key)
        return self._costs[key]

    def removed_filters(self) -> torch.Tensor | None:
        """Last-CONV filters each stage skips (S,): CAP_CONV's rm from stage 2 on; None for the other families."""
        if not isinstance(self.policy, CapConvPolicy):
            return None
        return torch.tensor([0] + [self.policy.rm] * (self.network.num_stages - 1))

    def decide(self, x: torch.Tensor) -> Decision:
        """The policy executed on `x` (`execute` or `execute_cap_conv`), as a `Decision` on the CPU."""
        if isinstance(self.policy, CapConvPolicy):
            p = self.policy
            return execute_cap_conv(self.network, x, self.filter_order, p.p_th, p.rm, p.smart)
        return execute(self.network, x, self.policy, self.fc_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, K, float32) of each image's exit stage, on `x`'s device."""
        return self.decide(x).probs.to(x.device, torch.float32)

    def route(self, x: torch.Tensor) -> ExitOutput:
        """The policy with its details: probabilities, MACs each image executed, exit stage, classes per stage."""
        decision = self.decide(x)
        macs = self.cost_model(x.shape[1:]).macs(decision.kept, self.removed_filters()).round().long()
        parts = (decision.probs.float(), macs, decision.exit_stage, decision.kept.T.contiguous())
        return ExitOutput(*(part.to(x.device) for part in parts))

    def extra_repr(self) -> str:
        return f"policy={self.policy.kind}, settings={self.policy.settings()}, fc_rows={self.fc_rows!r}"
