"""Experiments: `dynacnn demo` (base model, CP-CNN, MS-CNN, baselines, report) and `dynacnn bench` (side-by-side timing)."""
