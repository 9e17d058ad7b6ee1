"""Hyper-class discovery on a trained backbone (CP-CNN §3.1, Alg. 2): calibration probabilities -> clusters.json +
plots; and which clusters.json a conversion uses (`use_clusters`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dynacnn.cpcnn.clustering import HyperClassClustering
from dynacnn.cpcnn.model import check_members
from dynacnn.cpcnn.serialize import load_clusters
from dynacnn.errors import ConfigError
from dynacnn.io import ensure_dir, read_json, write_json
from dynacnn.report.cluster_plots import plot_eigenvalues, plot_similarity
from dynacnn.runs import weights_digest
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


KEEP_OR_REFIT = "delete it to fit the hyper-classes on these weights, or give it as --clusters-file to keep them"


def check_fitted_on(path: Path, clusters: dict[str, Any], backbone_sha256: str | None, fix: str) -> None:
    """Refuse hyper-classes fitted on other weights of the model (the `backbone_sha256` clusters.json records), unless
    a user chose them (`kept_by_user`)."""
    recorded = clusters.get("backbone_sha256")
    if None in (recorded, backbone_sha256) or recorded == backbone_sha256 or clusters.get("kept_by_user"):
        return
    raise ConfigError(
        f"{path} was fitted on other weights of the model (SHA-256 {str(recorded)[:12]}..., these: "
        f"{backbone_sha256[:12]}...); {fix}"
    )


def hyper_classes(
    out: Path,
    calib_probs: torch.Tensor,
    calib_labels: torch.Tensor,
    class_names: Sequence[str],
    seed: int,
    n_clusters: int | None = None,
    backbone_sha256: str | None = None,
) -> tuple[list[list[int]], dict[str, Any]]:
    """Hyper-classes from `out/clusters.json`, or Alg. 2 fitted on calibration probabilities (written there, with its
    plots, and the `backbone_sha256` they came from); `n_clusters` fixes their number (None: the eigengap's choice).
    A clusters.json fitted on other weights of the backbone is refused unless a user chose it (`use_clusters`)."""
    path = out / "clusters.json"
    if path.exists():
        check_fitted_on(path, read_json(path), backbone_sha256, KEEP_OR_REFIT)
    else:
        estimator = HyperClassClustering(n_clusters=n_clusters, random_state=seed)
        fitted = estimator.fit(calib_probs.double().numpy(), calib_labels.numpy())
        write_clusters(out, fitted, class_names, {"backbone_sha256": backbone_sha256})
    return load_clusters(out, len(class_names), n_clusters)


def discover_hyperclasses(
    backbone: torch.nn.Module, data: Any, out_dir: str | Path, *, device: str = "auto", **params: Any
) -> dict[str, Any]:
    """Fit `HyperClassClustering(**params)` on `backbone`'s calibration probabilities on `data` (`DatasetSplits`);
    write and return clusters.json (with its plots) in `out_dir`."""
    dev = resolve_device(device)
    estimator = HyperClassClustering(**params)
    probs, labels = calibration_probs(backbone.to(dev).eval(), data, dev)
    estimator.fit(probs.numpy(), labels.numpy())
    extra: dict[str, Any] = {"backbone_sha256": weights_digest(backbone)}
    if data.info.coarse_labels is not None:
        extra["agreement_with_coarse_labels"] = estimator.score_against(data.info.coarse_labels)
    return write_clusters(ensure_dir(out_dir), estimator, data.info.class_names, extra)


def _clusters_of(path: Path, class_names: Sequence[str], n_clusters: int | None, option: str) -> dict[str, Any]:
    """The JSON of a clusters file, refused unless it partitions `class_names` into `n_clusters` (when given)."""
    clusters = read_json(path)
    try:
        members = check_members([entry["classes"] for entry in clusters["hyper_classes"]], len(class_names))
    except (KeyError, TypeError):
        raise ConfigError(f"{path} has no hyper_classes list; make it with `dynacnn cluster`") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    names = clusters.get("class_names")
    if names is not None and list(names) != list(class_names):
        raise ConfigError(
            f"{path} was made for the classes {list(names)[:3]}... but the data has {list(class_names)[:3]}...; "
            "run `dynacnn cluster` on this model and data"
        )
    if n_clusters is not None and len(members) != n_clusters:
        raise ConfigError(
            f"{path} ({option}) holds {len(members)} hyper-classes but --hyper-classes {n_clusters} was given; drop "
            f"one of the two, or re-run `dynacnn cluster --hyper-classes {n_clusters}`"
        )
    return clusters


def use_clusters(
    out_dir: str | Path,
    given: Path | None,
    made_by_cluster: Path | None,
    class_names: Sequence[str],
    n_clusters: int | None,
    backbone_sha256: str | None = None,
) -> str:
    """Put the hyper-classes a conversion into `out_dir` will use at `out_dir/clusters.json` (where `convert` reads
    them); return where they come from, in words.

    First choice: `given` (`--clusters-file`, kept whatever weights it was fitted on), then `made_by_cluster` (what
    `dynacnn cluster` wrote into the run), each checked against the data's classes and `n_clusters` and copied;
    without either, a clusters.json already in `out_dir` (an earlier conversion) is kept, or else Alg. 2 fits them
    during the conversion. The last two are refused when fitted on other weights than `backbone_sha256`."""
    out = Path(out_dir)
    if given is not None:
        clusters = _clusters_of(Path(given), class_names, n_clusters, "--clusters-file")
        write_json(ensure_dir(out) / "clusters.json", {**clusters, "copied_from": str(given), "kept_by_user": True})
        return f"hyper-classes from {given} (--clusters-file)"
    if made_by_cluster is not None:
        clusters = _clusters_of(Path(made_by_cluster), class_names, n_clusters, "written by `dynacnn cluster`")
        rerun = "re-run `dynacnn cluster` on these weights, or give it as --clusters-file to keep them"
        check_fitted_on(Path(made_by_cluster), clusters, backbone_sha256, rerun)
        if Path(made_by_cluster).resolve() != (out / "clusters.json").resolve():
            write_json(ensure_dir(out) / "clusters.json", {**clusters, "copied_from": str(made_by_cluster)})
        return f"hyper-classes from {made_by_cluster} (written by `dynacnn cluster`)"
    if (out / "clusters.json").exists():
        earlier = _clusters_of(out / "clusters.json", class_names, n_clusters, "made by an earlier run into this --out")
        check_fitted_on(out / "clusters.json", earlier, backbone_sha256, KEEP_OR_REFIT)
        return f"hyper-classes from {out / 'clusters.json'} (made by an earlier run into this --out)"
    count = "the eigengap's count" if n_clusters is None else f"{n_clusters} of them"
    return f"hyper-classes fitted by Alg. 2 ({count}), written to {out / 'clusters.json'}"
