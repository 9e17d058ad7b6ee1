"""Hyper-class discovery on a trained run (CP-CNN §3.1, Alg. 2): calibration probabilities -> clusters.json + plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dynacnn.cpcnn.clustering import HyperClassClustering
from dynacnn.cpcnn.serialize import load_clusters
from dynacnn.io import ensure_dir, write_json
from dynacnn.report.cluster_plots import plot_eigenvalues, plot_similarity
from dynacnn.runs import load_run
from dynacnn.train import ImageBatches, predict, resolve_device


def calibration_probs(model: torch.nn.Module, splits: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs (N, K) and labels (N,) of `model` on the calibration split (never the test split)."""
    logits, labels = predict(model, ImageBatches(splits.calib, splits.info, 512), device)
    return torch.softmax(logits.double(), dim=1), labels


def write_clusters(
    out: Path, estimator: HyperClassClustering, class_names: Sequence[str], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write clusters.json, eigenvalues.png and similarity.png for a fitted estimator; return the JSON."""
    summary = {"class_names": list(class_names), **estimator.to_dict(class_names), **(extra or {})}
    write_json(out / "clusters.json", summary)
    plot_eigenvalues(
        out / "eigenvalues.png",
        estimator.eigenvalues_,
        estimator.n_clusters_,
        given=estimator.n_clusters is not None,
        n_neighbors=estimator.n_neighbors_,
        similarity=estimator.similarity_,
    )
    plot_similarity(
        out / "similarity.png",
        estimator.affinity_,
        estimator.labels_,
        n_neighbors=estimator.n_neighbors_,
        similarity=estimator.similarity_,
        class_names=class_names,
    )
    return summary


def hyper_classes(
    out: Path,
    calib_probs: torch.Tensor,
    calib_labels: torch.Tensor,
    class_names: Sequence[str],
    seed: int,
    n_clusters: int | None = None,
) -> tuple[list[list[int]], dict[str, Any]]:
    """Hyper-classes from `out/clusters.json`, or Alg. 2 fitted on calibration probabilities (written there, with its
    plots); `n_clusters` fixes their number (None: the eigengap's choice)."""
    if not (out / "clusters.json").exists():
        estimator = HyperClassClustering(n_clusters=n_clusters, random_state=seed)
        write_clusters(out, estimator.fit(calib_probs.double().numpy(), calib_labels.numpy()), class_names)
    return load_clusters(out, len(class_names), n_clusters)


def discover_hyperclasses(
    run_dir: str | Path, out_dir: str | Path, *, device: str = "auto", **params: Any
) -> dict[str, Any]:
    """Fit `HyperClassClustering(**params)` on the run's calibration probabilities; write and return clusters.json."""
    out = ensure_dir(out_dir)
    dev = resolve_device(device)
    run = load_run(run_dir, dev)
    splits = run.data_spec.load()
    probs, labels = calibration_probs(run.model, splits, dev)
    estimator = HyperClassClustering(**params).fit(probs.numpy(), labels.numpy())
    extra = {}
    if splits.info.coarse_labels is not None:
        extra["agreement_with_coarse_labels"] = estimator.score_against(splits.info.coarse_labels)
    return write_clusters(out, estimator, splits.info.class_names, extra)
