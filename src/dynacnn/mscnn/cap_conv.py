"""CAP_CONV (Alg. 3): per-class filter importance of each stage's last CONV layer, Maj voting, sliced execution.

Pre-processing (`filter_importance`) removes each filter of a stage's last CONV layer in turn (its
pooled maps become 0) on cached outputs of training images (`analysis.train_filter_ranking`) and
records, per class, the drop of the stage's top-1 accuracy (ties broken by the drop of the mean
true-class probability): Pre(i, cnv, c) is the filter order from least to most important. CONV_lst
is the last CONV layer of every stage, the layer Fig. 7 prunes. At run time stage i's top-P_th[i]
classes pick the filters removed from stage i+1 (`majority_filters`, Maj of Alg. 3); the "ignorant"
baseline removes the filters least important to all classes together. A removed filter's maps are 0
for this stage's and all later classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from dynacnn.errors import ConfigError
from dynacnn.mscnn.cache import StageOutputs, head_from_features
from dynacnn.mscnn.model import MSCNN
from dynacnn.mscnn.policies import Decision


@dataclass
class FilterImportance:
    """Per stage: Pre (K, F) filter order per class (least important first) and the class-agnostic order (F,)."""

    per_class: list[torch.Tensor]
    overall: list[torch.Tensor]
    acc_loss: list[torch.Tensor]

    def filters(self, stage: int) -> int:
        return self.overall[stage].numel()


def _order(acc_loss: torch.Tensor, prob_loss: torch.Tensor) -> torch.Tensor:
    """Filters sorted by accuracy loss, then probability loss (least important first), along the last dim."""
    by_prob = prob_loss.argsort(dim=-1, stable=True)
    by_acc = acc_loss.gather(-1, by_prob).argsort(dim=-1, stable=True)
    return by_prob.gather(-1, by_acc)


@torch.no_grad()
def filter_importance(model: MSCNN, outputs: StageOutputs) -> FilterImportance:
    """Alg. 3 pre-processing Pre(i, cnv, c) on cached outputs (the pipeline: training images), for the last CONV layer of every stage."""
    labels, classes = outputs.labels, model.config.num_classes
    onehot = F.one_hot(labels, classes).double()
    count = onehot.sum(0).clamp(min=1)
    area = model.config.pool**2
    per_class, overall, acc_losses = [], [], []
    for stage in range(model.num_stages):

        def scores(features: list[torch.Tensor], stage: int = stage) -> tuple[torch.Tensor, torch.Tensor]:
            probs = head_from_features(model, features, stage).softmax(1).double()
            correct = (probs.argmax(1) == labels).double()
            truth = probs.gather(1, labels[:, None]).squeeze(1)
            return onehot.T @ correct, onehot.T @ truth

        base_correct, base_truth = scores(outputs.features)
        filters = outputs.features[stage].shape[1] // area
        acc, prob = (
            torch.zeros(filters, classes, dtype=torch.float64),
            torch.zeros(filters, classes, dtype=torch.float64),
        )
        for f in range(filters):
            features = list(outputs.features)
            features[stage] = features[stage].clone()
            features[stage][:, f * area : (f + 1) * area] = 0
            correct, truth = scores(features)
            acc[f], prob[f] = base_correct - correct, base_truth - truth
        per_class.append(_order(acc.T / count[:, None], prob.T / count[:, None]))
        overall.append(_order(acc.sum(1), prob.sum(1)))
        acc_losses.append((acc.T / count[:, None]).float())
    return FilterImportance(per_class, overall, acc_losses)


def check_rm(rm: int, filters: int) -> None:
    """rm must leave at least one filter."""
    if not isinstance(rm, int) or not 0 <= rm < filters:
        raise ConfigError(f"rm={rm} must be an integer in 0..{filters - 1} (the last CONV layer has {filters} filters)")


def majority_filters(probs: torch.Tensor, order: torch.Tensor, p_th: int, rm: int) -> torch.Tensor:
    """Alg. 3 lines 6-9: the rm filters most often among the rm least important of the top-P_th classes (B, rm).

    Ties in the vote go to the filter with the lower summed rank over those classes, then the lower index.
    """
    classes, filters = order.shape
    if not 1 <= p_th <= classes:
        raise ConfigError(f"P_th={p_th} must be in 1..{classes} (the number of classes)")
    check_rm(rm, filters)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(filters).expand(classes, filters)).double()
    top = probs.topk(p_th, dim=1).indices.cpu()
    votes, rank_sum = (rank[top] < rm).sum(1), rank[top].sum(1)
    score = votes * (p_th * filters + 1) - rank_sum
    return score.argsort(dim=1, descending=True, stable=True)[:, :rm].sort(dim=1).values


def ignorant_filters(order: torch.Tensor, batch: int, rm: int) -> torch.Tensor:
    """The rm filters least important over all classes, the same for every image (B, rm)."""
    check_rm(rm, order.numel())
    return order[:rm].sort().values.expand(batch, rm)


def removed_filters(
    importance: FilterImportance, stage: int, prev_probs: torch.Tensor, p_th: int, rm: int, smart: bool
) -> torch.Tensor:
    """Filters (B, rm) to skip in stage `stage` given the previous stage's probabilities."""
    if smart:
        return majority_filters(prev_probs, importance.per_class[stage], p_th, rm)
    return ignorant_filters(importance.overall[stage], len(prev_probs), rm)


def _check(model: MSCNN, p_th: tuple[int, ...], rm: int) -> None:
    if len(p_th) != model.num_stages - 1:
        raise ConfigError(f"P_th needs one value per stage 1..{model.num_stages - 1}, got {len(p_th)}")
    classes = model.config.num_classes
    if not all(isinstance(p, int) and 1 <= p <= classes for p in p_th):
        raise ConfigError(f"P_th values must be integers in 1..{classes} (the number of classes), got {list(p_th)}")
    for stage in range(1, model.num_stages):
        check_rm(rm, model.config.stages[stage].last)


def simulate_cap_conv(
    model: MSCNN,
    outputs: StageOutputs,
    importance: FilterImportance,
    p_th: tuple[int, ...],
    rm: int,
    smart: bool = True,
) -> Decision:
    """Alg. 3 on cached outputs: zero the removed filters' pooled maps and recompute the classifiers."""
    _check(model, p_th, rm)
    area = model.config.pool**2
    features = list(outputs.features)
    probs = head_from_features(model, features, 0).softmax(1)
    for stage in range(1, model.num_stages):
        if rm:
            removed = removed_filters(importance, stage, probs, p_th[stage - 1], rm, smart)
            columns = (removed[:, :, None] * area + torch.arange(area)).flatten(1)
            features[stage] = features[stage].scatter(1, columns, 0.0)
        probs = head_from_features(model, features, stage).softmax(1)
    batch, stages = len(probs), model.num_stages
    kept = torch.full((stages, batch), model.config.num_classes, dtype=torch.long)
    return Decision(torch.full((batch,), stages - 1), probs.argmax(1), probs, kept)


def sliced_last_conv(
    last: torch.nn.Sequential, x: torch.Tensor, keep: torch.Tensor, pool: torch.nn.Module
) -> torch.Tensor:
    """Last CONV + BN + ReLU computing only each image's kept filters (weights sliced per group of images
    sharing a filter set), pooled; skipped filters give 0. The BN may be folded into the conv (`nn.Identity`).
    Returns (B, F * pool area)."""
    conv, bn = last[0], last[1]
    filters = conv.out_channels
    groups, inverse = torch.unique(keep, dim=0, return_inverse=True)
    out = None
    for g, kept in enumerate(groups):
        rows = (inverse == g).nonzero().squeeze(1)
        y = F.conv2d(
            x[rows], conv.weight[kept], None if conv.bias is None else conv.bias[kept], conv.stride, conv.padding
        )
        if isinstance(bn, torch.nn.BatchNorm2d):
            y = F.batch_norm(
                y, bn.running_mean[kept], bn.running_var[kept], bn.weight[kept], bn.bias[kept], False, 0.0, bn.eps
            )
        pooled = pool(torch.relu(y))
        if out is None:
            out = pooled.new_zeros(len(x), filters, *pooled.shape[2:])
        out[rows.unsqueeze(1), kept.unsqueeze(0)] = pooled
    return out.flatten(1)


@torch.no_grad()
def execute_cap_conv(
    model: MSCNN, x: torch.Tensor, importance: FilterImportance, p_th: tuple[int, ...], rm: int, smart: bool = True
) -> Decision:
    """Alg. 3 for real: stage i+1's last CONV layer runs only the filters kept for each image (sliced weights)."""
    _check(model, p_th, rm)
    if model.training:
        model.eval()
    bands = model.dwt(x)
    pooled = [model.features(bands, 0)]
    probs = model.heads[0](pooled[0]).float().softmax(1)
    for stage in range(1, model.num_stages):
        body = model.bodies[stage]
        if rm:
            removed = removed_filters(importance, stage, probs, p_th[stage - 1], rm, smart).to(x.device)
            drop = torch.zeros(len(x), body.last[0].out_channels, dtype=torch.bool, device=x.device).scatter_(
                1, removed, True
            )
            keep = (~drop).nonzero()[:, 1].view(len(x), -1)
            pooled.append(
                sliced_last_conv(body.last, body.features(bands[:, model.band_index[stage]]), keep, model.pool)
            )
        else:
            pooled.append(model.features(bands, stage))
        probs = model.heads[stage](torch.cat(pooled, 1)).float().softmax(1)
    batch, stages = len(x), model.num_stages
    kept = torch.full((stages, batch), model.config.num_classes, dtype=torch.long)
    return Decision(torch.full((batch,), stages - 1), probs.argmax(1).cpu(), probs.cpu(), kept)
