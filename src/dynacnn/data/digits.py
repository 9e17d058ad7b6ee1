"""scikit-learn's bundled 8x8 handwritten digits (offline), with a fixed stratified 25% test split.

The test split is drawn once with seed 0, whatever the split seed, so that it plays the role of an
official test set; `indices` of every split index `sklearn.datasets.load_digits()` order.
"""

from __future__ import annotations

import numpy as np

from dynacnn.data.splits import DatasetInfo, stratified_sample

TEST_FRACTION = 0.25
TEST_SEED = 0


def load_digits() -> tuple[DatasetInfo, tuple, tuple]:
    """Digits: info, (train images, labels, indices), (test images, labels, indices)."""
    from sklearn.datasets import load_digits as sklearn_digits  # imported here: sklearn is slow to import

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255 / 16)).clip(0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    test_pos = stratified_sample(labels, round(TEST_FRACTION * len(labels)), TEST_SEED)
    train_pos = np.setdiff1d(np.arange(len(labels)), test_pos, assume_unique=True)
    scaled = images[train_pos].astype(np.float32) / 255
    info = DatasetInfo(
        "digits", [str(d) for d in range(10)], (1, 8, 8), (float(scaled.mean()),), (float(scaled.std()),), "none", 0
    )
    return info, (images[train_pos], labels[train_pos], train_pos), (images[test_pos], labels[test_pos], test_pos)
