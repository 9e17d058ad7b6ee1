"""The hyper-class plots render from plain arrays (no estimator) into valid PNGs, atomically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dynacnn.errors import ConfigError
from dynacnn.report.cluster_plots import plot_eigenvalues, plot_similarity


def planted(sizes=(5, 9, 16), seed=0):
    """A block-diagonal affinity with noise, and the group of each class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    affinity = (labels[:, None] == labels[None, :]) * 0.8 + rng.uniform(0, 0.2, (len(labels),) * 2)
    order = rng.permutation(len(labels))
    return (affinity + affinity.T)[np.ix_(order, order)] / 2, labels[order]


def test_plots_are_valid_pngs(tmp_path):
    affinity, labels = planted()
    eigenvalues = [0.0, 0.01, 0.02, 0.6, 0.7, 0.9]
    options = {"n_neighbors": 4, "similarity": "confusion"}
    paths = [
        plot_eigenvalues(tmp_path / "eig.png", eigenvalues, 3, given=False, **options),
        plot_eigenvalues(tmp_path / "eig_all.png", eigenvalues[:3], 3, given=True, **options),
        plot_similarity(tmp_path / "sim.png", affinity, labels, class_names=[f"c{i}" for i in range(30)], **options),
        plot_similarity(tmp_path / "sub" / "sim_ids.png", affinity, labels, **options),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "eig.png",
        "eig_all.png",
        "sim.png",
        "sim_ids.png",
    ]


def test_class_names_of_another_length_are_refused_before_anything_is_written(tmp_path):
    affinity, labels = planted()
    with pytest.raises(ConfigError, match="class_names has 1 names for 30 classes"):
        plot_similarity(
            tmp_path / "bad.png", affinity, labels, class_names=["a"], n_neighbors=4, similarity="confusion"
        )
    assert not (tmp_path / "bad.png").exists()
