"""Benchmark (not a test): compare the activation rules (Alg. 1 "confusion", "top") and weightings (Eq. 3, clustifier).

Routing has to be hard for the rules to differ, so this uses more hyper-classes than the eigengap picks and an
early split. Heads are the backbone's own later stages restricted to each hyper-class (L0 heads initialised
from the backbone output exactly its renormalised probabilities, so no head training is needed); only the
clustifier is trained. All choices are on the calibration split; the test split is reported beside it.
Run: .venv/bin/python benchmarks/cpcnn_policies.py [--run runs/base] [--n-clusters 4] [--split stem]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dynacnn.cpcnn.cache import CachedSplit, backbone_logits, batched_outputs, cache_split, class_probs
from dynacnn.cpcnn.clustering import HyperClassClustering
from dynacnn.cpcnn.compress import build_head, shared_part
from dynacnn.cpcnn.config import DISTILL
from dynacnn.cpcnn.explore import SELECTION_TAUS, evaluate_policy
from dynacnn.cpcnn.policy import RULES, WEIGHTINGS, confusion_matrix
from dynacnn.cpcnn.training import hyper_class_teacher, train_component
from dynacnn.flops import count_macs
from dynacnn.io import ensure_dir, write_json
from dynacnn.runs import load_run
from dynacnn.train import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/base")
    parser.add_argument("--out", default="runs/cpcnn-policies")
    parser.add_argument("--n-clusters", type=int, default=4)
    parser.add_argument("--split", default="stem")
    parser.add_argument("--clustifier", default="LC")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    out = ensure_dir(args.out)
    run = load_run(args.run)
    data = run.data_spec.load()
    backbone, info, device = run.model.eval(), run.data_spec.load().info, torch.device("cpu")
    shape = tuple(info.input_shape)
    probs = {part: class_probs(backbone, getattr(data, part), info, device).double() for part in ("calib", "test")}
    labels = {part: getattr(data, part).labels for part in ("calib", "test")}
    estimator = HyperClassClustering(n_clusters=args.n_clusters).fit(probs["calib"].numpy(), labels["calib"].numpy())
    members = [
        [int(c) for c in torch.nonzero(torch.as_tensor(estimator.labels_) == g).flatten()]
        for g in range(args.n_clusters)
    ]
    group_of = torch.as_tensor(estimator.labels_, dtype=torch.long)
    shared = shared_part(backbone, args.split)
    train = cache_split(shared, data, "train", device)
    features = {part: cache_split(shared, data, part, device).features for part in ("calib", "test")}
    train.teacher = backbone_logits(backbone, args.split, train.features, shape)
    clustifier = build_head(backbone, args.split, args.clustifier, len(members), shape)
    config = TrainConfig(epochs=args.epochs, batch_size=128, lr=0.05, augment=False)
    record = train_component(
        clustifier,
        f"{args.split}-{args.clustifier}",
        train.training_batches(group_of, hyper_class_teacher(members), None, 128),
        (CachedSplit(features["calib"], labels["calib"]), None, group_of[labels["calib"]]),
        out,
        config,
        {},
        device,
        False,
        distill=DISTILL,
    )
    v = {part: torch.softmax(batched_outputs(clustifier, features[part]).double(), dim=1) for part in ("calib", "test")}
    confusion = confusion_matrix(group_of[labels["calib"]], v["calib"].argmax(1), len(members))
    x = torch.zeros(1, *shape)
    fixed = count_macs(shared, x).macs + count_macs(clustifier, shared(x)).macs
    head_macs = torch.tensor(
        [
            count_macs(build_head(backbone, args.split, "L0", len(group), shape, group), shared(x)).macs
            for group in members
        ]
    )
    rows = []
    for part in ("calib", "test"):
        head_probs = [probs[part][:, group] / probs[part][:, group].sum(1, keepdim=True) for group in members]
        for rule in RULES:
            for weighting in WEIGHTINGS:
                for tau in SELECTION_TAUS:
                    row = evaluate_policy(
                        v[part], head_probs, members, labels[part], confusion, tau, rule, weighting, fixed, head_macs
                    )
                    rows.append({"split": part, "rule": rule, "weighting": weighting, **row})
    base = {part: float((probs[part].argmax(1) == labels[part]).double().mean()) for part in ("calib", "test")}
    lines = [
        f"clusters: {[[info.class_names[c] for c in group] for group in members]}; split {args.split}; clustifier "
        f"{args.clustifier} calibration top-1 {record['calib_top1']:.4f}; base top-1 calib {base['calib']:.4f}, test {base['test']:.4f}",
        "",
        "| split | rule / weighting | " + " | ".join(f"{t:g}" for t in SELECTION_TAUS) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in SELECTION_TAUS) + " |",
    ]
    for part in ("calib", "test"):
        for rule in RULES:
            for weighting in WEIGHTINGS:
                cells = [r for r in rows if (r["split"], r["rule"], r["weighting"]) == (part, rule, weighting)]
                lines.append(
                    f"| {part} | {rule} / {weighting} | " + " | ".join(f"{100 * r['top1']:.2f}" for r in cells) + " |"
                )
            cells = [r for r in rows if (r["split"], r["rule"], r["weighting"]) == (part, rule, WEIGHTINGS[0])]
            lines.append(
                f"| {part} | {rule}: MACs (M) | " + " | ".join(f"{r['macs_per_image'] / 1e6:.2f}" for r in cells) + " |"
            )
    markdown = "\n".join(lines) + "\n"
    (Path(out) / "policies.md").write_text(markdown)
    write_json(
        Path(out) / "policies.json",
        {"members": members, "clustifier_calib_top1": record["calib_top1"], "base": base, "rows": rows},
    )
    print(markdown)
    print(json.dumps({"written": str(Path(out) / "policies.md")}))


if __name__ == "__main__":
    main()
