"""Execution paths that really skip work: exited images leave the batch, pruned FC rows are never computed.

`execute(model, x, policy)` runs stage after stage on the sub-batch still active (Alg. 1, 2, 4) and
applies the same `Policy.step` as `simulate`, so both return the same exits and predictions. A stage whose
class mask is partial computes only some rows of its last FC layer, in one of two ways (`fc_rows`):

- "image" (default, Alg. 2 as written): every kept (image, class) pair gathers its weight row and takes one
  dot product with the image's features, all pairs in one batched matmul; MACs and weight reads drop with
  each image's own kept classes, and `Decision.kept` equals `simulate`'s.
- "batch": one matmul over the rows that any image of the sub-batch keeps; a row is skipped only when no
  image needs it, and `Decision.kept` records, per image, the rows computed for its sub-batch. With few
  classes and small FC layers (the demo's MS-CNN: FC rows are 0.3% of its MACs) the per-pair gathers cost
  more time than the rows they save, and this is the faster execution; with many classes and large FC
  layers (the paper's AlexNet) "image" saves more.

Under `torch.autocast` the layers run in reduced precision; logits, probabilities and decisions are float32.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from dynacnn.errors import ConfigError
from dynacnn.mscnn.model import MSCNN, StageHead
from dynacnn.mscnn.policies import Decision, Policy

FC_ROWS = ("image", "batch")


def head_logits(head: StageHead, features: torch.Tensor, mask: torch.Tensor, fc_rows: str = "image") -> torch.Tensor:
    """Float32 logits of the kept classes (others -inf), computing only the needed rows of the last FC layer
    (Alg. 2): each image's own kept rows ("image") or the rows any image keeps ("batch")."""
    hidden = head.hidden(features)
    if bool(mask.all()):
        return head.fc(hidden).float()
    logits = torch.full(mask.shape, float("-inf"), device=hidden.device)
    if fc_rows == "batch":
        classes = mask.any(0).nonzero().squeeze(1)
        logits[:, classes] = F.linear(hidden, head.fc.weight[classes], head.fc.bias[classes]).float()
        return logits.masked_fill_(~mask, float("-inf"))
    rows, classes = mask.nonzero(as_tuple=True)
    values = torch.bmm(head.fc.weight[classes].unsqueeze(1), hidden[rows].unsqueeze(2)).view(-1) + head.fc.bias[classes]
    logits[rows, classes] = values.float()
    return logits


@torch.no_grad()
def execute(model: MSCNN, x: torch.Tensor, policy: Policy, fc_rows: str = "image") -> Decision:
    """Run `policy` on images `x`, really skipping exited images and pruned FC rows (Alg. 1, 2, 4)."""
    if fc_rows not in FC_ROWS:
        raise ConfigError(f"fc_rows {fc_rows!r} must be one of {', '.join(FC_ROWS)}")
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
        kept[stage, index] = mask.sum(1) if fc_rows == "image" else mask.any(0).sum()
        logits = head_logits(model.heads[stage], torch.cat(pooled, 1), mask, fc_rows)
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
