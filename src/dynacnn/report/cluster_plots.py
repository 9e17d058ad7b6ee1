"""Plots of a hyper-class clustering (Alg. 2 of CP-CNN) from its fitted arrays, written atomically as PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dynacnn.errors import ConfigError
from dynacnn.report.render import save_figure

MAX_TICK_LABELS = 60


def plot_eigenvalues(
    path: str | os.PathLike,
    eigenvalues: Sequence[float],
    n_clusters: int,
    *,
    given: bool,
    n_neighbors: int,
    similarity: str,
) -> Path:
    """Alg. 2 step 5: the smallest eigenvalues of L x = lambda D x, with the gap after `n_clusters` marked.

    `given`: whether the count was given (else the eigengap chose it); `n_neighbors` and `similarity` go in the title."""
    values, n = np.asarray(eigenvalues, dtype=float), int(n_clusters)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    index = np.arange(1, len(values) + 1)
    ax.plot(index, values, "o-", ms=3, color="C0")
    if n < len(values):
        ax.plot(
            [n, n + 1], values[n - 1 : n + 1], "o-", ms=5, color="C3", label=f"gap: {values[n] - values[n - 1]:.3g}"
        )
        ax.axvline(n + 0.5, ls="--", color="C3")
        ax.legend(loc="upper left")
    how = "given" if given else "eigengap"
    ax.set_title(f"{n} hyper-classes ({how}), k = {n_neighbors}, similarity = {similarity}")
    ax.set_xlabel("eigenvalue index")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("eigenvalue of L x = λ D x")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_similarity(
    path: str | os.PathLike,
    affinity: np.ndarray,
    labels: Sequence[int],
    *,
    n_neighbors: int,
    similarity: str,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Alg. 2 step 1: the clustered (K, K) affinity, classes grouped by hyper-class (`labels`, ids 0..n-1), boundaries
    drawn; `class_names` (one per class) label the axes when there are at most MAX_TICK_LABELS of them."""
    labels = np.asarray(labels)
    affinity = np.asarray(affinity)
    if class_names is not None and len(class_names) != len(labels):
        raise ConfigError(f"class_names has {len(class_names)} names for {len(labels)} classes")
    order = np.lexsort((np.arange(len(labels)), labels))
    sizes = np.bincount(labels)
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    image = ax.imshow(affinity[np.ix_(order, order)], cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="affinity")
    for edge in np.cumsum(sizes)[:-1] - 0.5:
        ax.axhline(edge, color="white", lw=0.8)
        ax.axvline(edge, color="white", lw=0.8)
    if class_names is not None and len(class_names) <= MAX_TICK_LABELS:
        names = [str(name) for name in class_names]
        ax.set_xticks(range(len(order)), [names[i] for i in order], rotation=90, fontsize=6)
        ax.set_yticks(range(len(order)), [names[i] for i in order], fontsize=6)
    else:
        ax.set_xlabel("classes, grouped by hyper-class")
    ax.set_title(f"{similarity} affinity, {len(sizes)} hyper-classes, k = {n_neighbors}")
    return save_figure(fig, path)
