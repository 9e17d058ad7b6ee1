"""Per-stage outputs computed once (logits and pooled last-CONV features of every stage for every image)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynacnn.mscnn.model import MSCNN


@dataclass
class StageOutputs:
    """Logits (S, B, K), pooled last-CONV features of each stage [(B, D_s)] and labels (B,) of one split."""

    logits: torch.Tensor
    features: list[torch.Tensor]
    labels: torch.Tensor

    @property
    def probs(self) -> torch.Tensor:
        """Softmax of every stage over all classes (S, B, K)."""
        return self.logits.softmax(2)

    def stage_top1(self) -> list[float]:
        """Top-1 accuracy of every stage's classifier."""
        return (self.logits.argmax(2) == self.labels).float().mean(1).tolist()

    def stage_top5(self) -> list[float]:
        """Top-5 accuracy of every stage's classifier (classes scoring as high as the true one do not push it down)."""
        truth = self.logits.gather(2, self.labels.expand(self.logits.shape[0], -1).unsqueeze(2))
        return ((self.logits > truth).sum(2) < 5).float().mean(1).tolist()

    def subset(self, index: torch.Tensor) -> StageOutputs:
        """The outputs of the images at `index`."""
        return StageOutputs(self.logits[:, index], [f[index] for f in self.features], self.labels[index])


@torch.no_grad()
def collect(model: MSCNN, data, device: torch.device | str = "cpu") -> StageOutputs:
    """Run every stage on every image of `data` (a Batches source) once and keep its outputs on the CPU."""
    model.eval()
    logits, features, labels = [], [], []
    for x, y in data(None, torch.device(device)):
        bands = model.dwt(x)
        pooled = [model.features(bands, s) for s in range(model.num_stages)]
        logits.append(torch.stack([head(torch.cat(pooled[: s + 1], 1)) for s, head in enumerate(model.heads)]).cpu())
        features.append([p.cpu() for p in pooled])
        labels.append(y.cpu())
    return StageOutputs(torch.cat(logits, 1), [torch.cat(parts) for parts in zip(*features)], torch.cat(labels))


def head_from_features(model: MSCNN, features: list[torch.Tensor], stage: int) -> torch.Tensor:
    """Stage `stage`'s logits recomputed from (possibly modified) pooled features of stages 0..stage."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model.heads[stage](torch.cat(features[: stage + 1], 1).to(device)).cpu()
