"""Benchmark (not a test): the paper's Alg. 1 + Eq. 3 against ours and the other two rule x weighting combinations.

A CP-CNN on Fashion-MNIST with four hyper-classes (with the demo's two, the rules cannot differ), S = stem so that
the paper's L44 clustifier is a candidate beside LP and LC, rule and weighting "auto": each combination gets its own
tau on the calibration split, the cheapest meeting --max-drop is chosen; the test split is reported beside it.
Prints each combination's calibration and test top-1 / top-5 / MACs per image and the chosen one.

Base (not in the repository): dynacnn train --data fashion-mnist --arch resnet18 --width 0.25 --epochs 2 \\
    --no-augment --out /tmp/base
Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cpcnn_policy.py --run /tmp/base --out /tmp/cpcnn-policy
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from dynacnn.cpcnn.config import CPCNNConfig
from dynacnn.cpcnn.pipeline import convert
from dynacnn.io import read_json
from dynacnn.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="/tmp/base")
    parser.add_argument("--out", default="/tmp/cpcnn-policy")
    parser.add_argument("--hyper-classes", type=int, default=4)
    parser.add_argument("--split", default="stem")
    parser.add_argument("--configs", default="L22,L44", help="head candidates")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=20000, help="stratified subset the components train on")
    parser.add_argument("--max-drop", type=float, default=1.0)
    args = parser.parse_args()
    started = time.perf_counter()
    run = load_run(args.run, "cpu")
    data = run.data_spec.load()
    data = replace(data, train=data.train.subset(args.train_images, seed=0))
    config = CPCNNConfig(
        split=args.split,
        n_clusters=args.hyper_classes,
        configs=args.configs,
        epochs=args.epochs,
        max_drop=args.max_drop,
        memory_format="channels_last",
    )
    convert(run.model, data, args.out, config, device="cpu")
    result = read_json(f"{args.out}/cpcnn.json")
    base, chosen = result["base"], result["chosen"]
    print(f"hyper-classes: {result['clusters']}")
    print(f"split {result['split']}, heads {result['configs']['heads']}, clustifier {result['configs']['clustifier']}")
    for name, record in result["table1"]["clustifier"].items():
        print(f"  clustifier {name}: calib hyper-class top-1 {100 * record['calib_top1']:.2f}%, {record['macs']} MACs")
    for name, reason in result["clustifier_skipped"].items():
        print(f"  clustifier {name} skipped: {reason}")
    print(
        f"base: calib top-1 {100 * base['calib_top1']:.2f}% top-5 {100 * base['calib_top5']:.2f}%; test top-1 "
        f"{100 * base['top1']:.2f}% top-5 {100 * base['top5']:.2f}%; {base['macs_per_image'] / 1e6:.3f} M MACs"
    )
    header = f"{'rule / weighting':24} {'tau':>5} {'calib t1':>9} {'calib t5':>9} {'calib MMACs':>11} {'meets':>6}"
    print(header + f" {'test t1':>8} {'test t5':>8} {'test MMACs':>10}")
    for row in result["table2_policies"]:
        cal, test = row["calib"], row["test"]
        mark = " *" if row["chosen"] else ""
        print(
            f"{row['rule'] + ' / ' + row['weighting']:24} {row['tau']:5g} {100 * cal['top1']:8.2f}% "
            f"{100 * cal['top5']:8.2f}% {cal['macs_per_image'] / 1e6:11.3f} {str(row['meets_max_drop']):>6} "
            f"{100 * test['top1']:7.2f}% {100 * test['top5']:7.2f}% {test['macs_per_image'] / 1e6:10.3f}{mark}"
        )
    print(
        f"chosen (*): {chosen['rule']} / {chosen['weighting']}, tau {chosen['tau']:g}; routed test top-1 "
        f"{100 * chosen['top1']:.2f}% top-5 {100 * chosen['top5']:.2f}%, {chosen['macs_per_image'] / 1e6:.3f} M MACs, "
        f"speed-up {chosen['speedup']:.2f}x ({torch.get_num_threads()} thread(s)); {time.perf_counter() - started:.0f} s"
    )
    print(json.dumps(result["policy_choice"]["chosen"]))


if __name__ == "__main__":
    main()
