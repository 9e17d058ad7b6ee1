"""Benchmark (not a test): Table 1 of CP-CNN reproduced on ResNet-18 (ImageNet stem, 224x224): our MAC reductions beside the paper's.

Run: .venv/bin/python benchmarks/cpcnn_table1.py [--out runs/cpcnn_table1.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dynacnn.cpcnn.compress import table1_reduction
from dynacnn.io import ensure_dir, write_text
from dynacnn.report.cpcnn_report import table1_reproduction_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args()
    markdown = table1_reproduction_markdown(table1_reduction())
    if args.out:
        ensure_dir(Path(args.out).parent)
        write_text(args.out, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
