"""Execution paths that really skip work: exited images leave the batch, pruned FC rows are never computed.

`execute(model, x, policy)` runs stage after stage on the sub-batch still active (Alg. 1, 2, 4) and
applies the same `Policy.step` as `simulate`, so both return the same `Decision`. A stage whose class
mask is partial computes only the kept rows of its last FC layer: every kept (image, class) pair
gathers its weight row and takes one dot product with the image's features, all pairs in one batched
matmul, so MACs and weight reads drop with the number of kept classes and no Python loop runs per group.
"""

from __future__ import annotations

import torch

from dynacnn.mscnn.model import MSCNN, StageHead
from dynacnn.mscnn.policies import Decision, Policy


def head_logits(head: StageHead, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits of the kept classes (others -inf), computing only their rows of the last FC layer (Alg. 2)."""
    hidden = head.hidden(features)
    if bool(mask.all()):
        return head.fc(hidden)
    rows, classes = mask.nonzero(as_tuple=True)
    values = torch.bmm(head.fc.weight[classes].unsqueeze(1), hidden[rows].unsqueeze(2)).view(-1) + head.fc.bias[classes]
    logits = torch.full(mask.shape, float("-inf"), dtype=hidden.dtype, device=hidden.device)
    logits[rows, classes] = values
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
