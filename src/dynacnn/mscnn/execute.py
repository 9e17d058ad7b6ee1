"""Execution paths that really skip work: exited images leave the batch, pruned FC rows are never computed.

`execute(model, x, policy)` runs stage after stage on the sub-batch still active (Alg. 1, 2, 4) and
applies the same `Policy.step` as `simulate`, so both return the same `Decision`. A stage whose class
mask is partial computes only the kept rows of its last FC layer: images are grouped by how many
classes they keep, and within a group each image's rows are gathered from the weight and multiplied
in one batched matmul, so MACs and weight reads drop with the number of kept classes.
"""

from __future__ import annotations

import torch

from dynacnn.mscnn.model import MSCNN, StageHead
from dynacnn.mscnn.policies import Decision, Policy


def kept_classes(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (B, count) of the kept classes of rows that keep exactly `count` classes, ascending."""
    return (~mask).to(torch.int8).argsort(dim=1, stable=True)[:, :count]


def head_logits(head: StageHead, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits of the kept classes (others -inf), computing only their rows of the last FC layer (Alg. 2)."""
    hidden = head.hidden(features)
    counts = mask.sum(1)
    classes = mask.shape[1]
    if bool((counts == classes).all()):
        return head.fc(hidden)
    logits = torch.full(mask.shape, float("-inf"), dtype=hidden.dtype, device=hidden.device)
    for count in counts.unique().tolist():
        rows = (counts == count).nonzero().squeeze(1)
        if count == classes:
            logits[rows] = head.fc(hidden[rows])
            continue
        index = kept_classes(mask[rows], count)
        weight = head.fc.weight[index]
        values = torch.bmm(weight, hidden[rows].unsqueeze(2)).squeeze(2) + head.fc.bias[index]
        logits[rows] = logits[rows].scatter(1, index, values)
    return logits


@torch.no_grad()
def execute(model: MSCNN, x: torch.Tensor, policy: Policy) -> Decision:
    """Run `policy` on images `x`, really skipping exited images and pruned FC rows (Alg. 1, 2, 4)."""
    if model.training:
        model.eval()
    batch, classes, stages = len(x), model.config.num_classes, model.num_stages
    bands = model.dwt(x)
    index = torch.arange(batch, device=x.device)
    mask = torch.ones(batch, classes, dtype=torch.bool, device=x.device)
    exit_stage = torch.full((batch,), stages - 1, dtype=torch.long, device=x.device)
    probs_out = torch.zeros(batch, classes, device=x.device)
    kept = torch.zeros(stages, batch, dtype=torch.long, device=x.device)
    pooled: list[torch.Tensor] = []
    for stage in range(stages):
        pooled.append(model.features(bands, stage))
        kept[stage, index] = mask.sum(1)
        logits = head_logits(model.heads[stage], torch.cat(pooled, 1), mask)
        probs, leave, mask = policy.step(stage, logits, mask)
        exit_stage[index[leave]] = stage
        probs_out[index[leave]] = probs[leave]
        if bool(leave.all()):
            break
        if bool(leave.any()):
            stay = (~leave).nonzero().squeeze(1)
            index, bands, mask = index[stay], bands[stay], mask[stay]
            pooled = [p[stay] for p in pooled]
    return Decision(exit_stage.cpu(), probs_out.argmax(1).cpu(), probs_out.cpu(), kept.cpu())
