"""Benchmark Alg. 2 of CP-CNN at scale: K = 1000 classes, 20 calibration images each, must fit in < 5 s.

Run: python benchmarks/cluster_scale.py [--classes 1000 --per-class 20 --groups 25 --repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score

from dynacnn.cpcnn.clustering import HyperClassClustering


def mock_calibration(
    n_classes: int, per_class: int, n_groups: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax of mock logits over planted groups of unequal sizes (true class 5, same group 2.5, noise 1)."""
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n_classes - 10 * n_groups, np.full(n_groups, 1 / n_groups)) + 10
    groups = rng.permutation(np.repeat(np.arange(n_groups), sizes))
    labels = np.repeat(np.arange(n_classes), per_class)
    logits = rng.standard_normal((len(labels), n_classes), dtype=np.float32)
    logits += 2.5 * (groups[labels][:, None] == groups[None, :])
    logits[np.arange(len(labels)), labels] += 5.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True), labels, groups


def main() -> None:
    """Time HyperClassClustering.fit on mock calibration outputs and print the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--groups", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=5.0, help="seconds allowed per fit")
    args = parser.parse_args()
    probs, labels, groups = mock_calibration(args.classes, args.per_class, args.groups, seed=0)
    print(f"probs {probs.shape} {probs.dtype}, {args.groups} planted groups")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        est = HyperClassClustering().fit(probs, labels)
        times.append(time.perf_counter() - start)
    print(
        f"n_clusters_={est.n_clusters_} n_neighbors_={est.n_neighbors_} max_clusters_={est.max_clusters_} "
        f"ARI vs planted={adjusted_rand_score(groups, est.labels_):.3f}"
    )
    print(
        f"fit time: best {min(times):.2f} s, median {float(np.median(times)):.2f} s over {args.repeats} runs "
        f"(median {'within' if np.median(times) < args.budget else 'OVER'} the {args.budget:.0f} s budget)"
    )


if __name__ == "__main__":
    main()
