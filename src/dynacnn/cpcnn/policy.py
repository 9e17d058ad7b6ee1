"""Alg. 1 / Eq. 1 (minimum activation set) and Eq. 3 (weighted merge) of CP-CNN as pure batched functions.

Threshold semantics: `tau` is the confidence-sum threshold tau_CS of Eq. 1, in (0, 1]. Hyper-classes
are added in the rule's order until the clustifier probabilities summed over the active set exceed
`tau` (the first one is always active, so a tau below the top probability activates one head).
`tau = 1` activates every hyper-class (the sum of all G probabilities cannot exceed 1, so Eq. 1 would
never stop before the end); tau outside (0, 1] is refused.

Rules (the order in which hyper-classes join the set):
- "confusion" (Alg. 1): the clustifier's argmax first, then the hyper-classes most often confused with it
  on the calibration split, i.e. by decreasing `confusion[:, argmax]` (ties broken by v).
- "top": by decreasing clustifier probability v (HD-CNN style).

Weightings (how the active heads' class probabilities are mixed, each row sums to 1 over the set):
- "eq3" (Eq. 3): head g gets confusion[g, argmax] renormalised over the active set. The diagonal of a
  confusion matrix dominates its column, so the argmax head keeps nearly all the weight and the extra
  heads activated by a larger tau can rarely change the prediction: accuracy stops improving with tau.
- "clustifier": head g gets v_g renormalised over the active set, a truncated version of the total
  probability sum_g P(g | x) P(k | x, g).

`confusion` holds counts (or any non-negative scores) with rows = true hyper-class and columns =
predicted hyper-class, measured on the calibration split (the paper measured it on its test set).
"""

from __future__ import annotations

import torch

from dynacnn.errors import ConfigError

RULES = ("confusion", "top")
WEIGHTINGS = ("eq3", "clustifier")
DEFAULT_RULE = "top"
DEFAULT_WEIGHTING = "clustifier"
"""What a `CPCNN` built without a policy uses; conversions choose theirs on the calibration split (`AUTO`)."""
AUTO = "auto"
"""`CPCNNConfig.rule` / `weighting`: choose it on the calibration split (`cpcnn.choice.choose_policy`)."""


def check_tau(tau: float) -> float:
    """Refuse a confidence threshold outside (0, 1] (Eq. 1)."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau <= 1:
        raise ConfigError(f"tau {tau!r} must be in (0, 1]; 1 activates every hyper-class, e.g. use 0.9")
    return float(tau)


def check_policy(rule: str, weighting: str, allow_auto: bool = False) -> None:
    """Refuse unknown rule / weighting names (and `AUTO` unless `allow_auto`)."""
    extra = (AUTO,) if allow_auto else ()
    hint = f" or {AUTO} (chosen on the calibration split)" if allow_auto else ""
    if rule not in (*RULES, *extra):
        raise ConfigError(f"unknown activation rule {rule!r}; use one of {', '.join(RULES)}{hint}")
    if weighting not in (*WEIGHTINGS, *extra):
        raise ConfigError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}{hint}")


def _check_inputs(v: torch.Tensor, confusion: torch.Tensor | None, needs_confusion: bool) -> None:
    """Refuse v that is not (B, G) floating point, and a confusion matrix that is not (G, G) and non-negative."""
    if not torch.is_tensor(v) or v.dim() != 2 or v.shape[1] < 1 or not v.is_floating_point():
        raise ConfigError(
            f"v must be a floating (B, G) tensor of clustifier probabilities, got {getattr(v, 'shape', type(v))}"
        )
    if confusion is None:
        if needs_confusion:
            raise ConfigError("the 'confusion' rule and 'eq3' weighting need the clustifier's (G, G) confusion matrix")
        return
    groups = v.shape[1]
    if not torch.is_tensor(confusion) or tuple(confusion.shape) != (groups, groups):
        raise ConfigError(
            f"confusion must be a ({groups}, {groups}) tensor to match v, got {getattr(confusion, 'shape', type(confusion))}"
        )
    if (confusion < 0).any() or not torch.isfinite(confusion).all():
        raise ConfigError(
            "confusion must hold finite non-negative counts (rows = true, columns = predicted hyper-class)"
        )


def activation_order(v: torch.Tensor, by_column: torch.Tensor | None, rule: str) -> torch.Tensor:
    """Alg. 1: the (B, G) order in which hyper-classes join the activation set, argmax first; `by_column` is the
    confusion matrix transposed (row g: confusion[:, g]) in v's dtype, needed by the "confusion" rule."""
    order = torch.argsort(v, dim=1, descending=True, stable=True)
    if rule == "top":
        return order
    predicted = order[:, :1]
    score = by_column[predicted[:, 0]].scatter_(1, predicted, float("inf"))  # row b: confusion[:, argmax_b]
    return order.gather(1, torch.argsort(score.gather(1, order), dim=1, descending=True, stable=True))


def activate(
    v: torch.Tensor,
    confusion: torch.Tensor | None,
    tau: float,
    rule: str = DEFAULT_RULE,
    weighting: str = DEFAULT_WEIGHTING,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alg. 1 / Eq. 1 minimum activation set and Eq. 3 (or clustifier) weights: (active (B, G) bool, weights (B, G))."""
    check_policy(rule, weighting)
    tau = check_tau(tau)
    _check_inputs(v, confusion, rule == "confusion" or weighting == "eq3")
    by_column = None if confusion is None else confusion.to(v.dtype).t()
    order = activation_order(v, by_column, rule)
    if tau >= 1:
        active = torch.ones_like(v, dtype=torch.bool)
    else:
        ordered = v.gather(1, order)
        in_set = ordered.cumsum(1).sub_(ordered) <= tau  # summed v of the hyper-classes already in the set
        in_set[:, 0] = True
        active = torch.empty_like(in_set).scatter_(1, order, in_set)
    score = torch.where(active, by_column[order[:, 0]] if weighting == "eq3" else v, 0.0)
    total = score.sum(1, keepdim=True)
    uniform = active.to(v.dtype) / active.sum(1, keepdim=True)
    weights = torch.where(total > 0, score / total.clamp_min(torch.finfo(v.dtype).tiny), uniform)
    return active, weights


def merge(
    weights: torch.Tensor, head_probs: list[torch.Tensor], members: list[torch.Tensor], num_classes: int
) -> torch.Tensor:
    """Eq. 3 merge: (B, K) class probabilities = sum over heads of weight_g * head g's probabilities on its members."""
    out = weights.new_zeros(weights.shape[0], num_classes)
    for group, (probs, classes) in enumerate(zip(head_probs, members)):
        out[:, classes] += weights[:, group, None] * probs
    return out


def confusion_matrix(true: torch.Tensor, predicted: torch.Tensor, groups: int) -> torch.Tensor:
    """Counts (G, G): rows = true hyper-class, columns = predicted; used by Alg. 1 and Eq. 3."""
    flat = true.long() * groups + predicted.long()
    return torch.bincount(flat, minlength=groups * groups).view(groups, groups).double()
