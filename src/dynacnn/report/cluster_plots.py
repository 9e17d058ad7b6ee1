"""Plots of a fitted HyperClassClustering (Alg. 2 of CP-CNN), written atomically as PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dynacnn.cpcnn.clustering import HyperClassClustering
from dynacnn.io import atomic_write, ensure_dir

MAX_TICK_LABELS = 60


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Render `fig` with the Agg canvas (no pyplot state) into a temp file renamed over `path`."""
    path = Path(path)
    ensure_dir(path.parent)
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=120, bbox_inches="tight"))


def plot_eigenvalues(est: HyperClassClustering, path: str | os.PathLike) -> Path:
    """Alg. 2 step 5: the smallest eigenvalues of L x = lambda D x, with the gap after n_clusters_ marked."""
    est.require_fitted()
    values, n = est.eigenvalues_, est.n_clusters_
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    index = np.arange(1, len(values) + 1)
    ax.plot(index, values, "o-", ms=3, color="C0")
    if n < len(values):
        ax.plot([n, n + 1], values[n - 1 : n + 1], "o-", ms=5, color="C3", label=f"gap: {values[n] - values[n - 1]:.3g}")
        ax.axvline(n + 0.5, ls="--", color="C3")
        ax.legend(loc="upper left")
    how = "given" if est.n_clusters is not None else "eigengap"
    ax.set_title(f"{n} hyper-classes ({how}), k = {est.n_neighbors_}, similarity = {est.similarity_}")
    ax.set_xlabel("eigenvalue index")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("eigenvalue of L x = λ D x")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_similarity(est: HyperClassClustering, path: str | os.PathLike, class_names: Sequence[str] | None = None) -> Path:
    """Alg. 2 step 1: the clustered affinity, classes grouped by hyper-class, boundaries drawn."""
    names = est.resolve_names(class_names)
    order = np.lexsort((np.arange(len(est.labels_)), est.labels_))
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    image = ax.imshow(est.affinity_[np.ix_(order, order)], cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="affinity")
    for edge in np.cumsum(est.cluster_sizes_)[:-1] - 0.5:
        ax.axhline(edge, color="white", lw=0.8)
        ax.axvline(edge, color="white", lw=0.8)
    if class_names is not None and len(names) <= MAX_TICK_LABELS:
        ax.set_xticks(range(len(order)), [names[i] for i in order], rotation=90, fontsize=6)
        ax.set_yticks(range(len(order)), [names[i] for i in order], fontsize=6)
    else:
        ax.set_xlabel("classes, grouped by hyper-class")
    ax.set_title(f"{est.similarity_} affinity, {est.n_clusters_} hyper-classes, k = {est.n_neighbors_}")
    return _save(fig, path)
