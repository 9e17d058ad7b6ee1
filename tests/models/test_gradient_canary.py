"""Gradient canary: every conv geometry the project trains, in both layouts and with 1 and 2 threads, against float64.

Each case runs in its own process with a timeout, so a hang or a heap corruption inside oneDNN (the strided 1x1
NHWC backward-weights bug of AVX2 CPUs, see `dynacnn.models.layout`) fails that case, not the whole run.
Run the suite once more with `ONEDNN_MAX_CPU_ISA=AVX2` to exercise the AVX2 kernels on any x86 CPU (CI does).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

CASE = Path(__file__).with_name("gradient_case.py")
TIMEOUT_S = 60
CASES = [
    (kernel, stride, in_channels, memory_format, threads)
    for kernel, stride, in_channels, memory_format, threads in itertools.product(
        (1, 3), (1, 2), (4, 16), ("contiguous", "channels_last"), (1, 2)
    )
]


def run_case(case: tuple) -> tuple[int | str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(case[-1])}
    try:
        done = subprocess.run(
            [sys.executable, str(CASE), *map(str, case)], capture_output=True, text=True, timeout=TIMEOUT_S, env=env
        )
    except subprocess.TimeoutExpired:
        return "timeout", f"hung for more than {TIMEOUT_S} s"
    return done.returncode, (done.stdout + done.stderr).strip()[-2000:]


@pytest.fixture(scope="module")
def outcomes() -> dict[tuple, tuple[int | str, str]]:
    """Every case, two processes at a time (each isolated: one crash or hang touches only its own result)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CASES, pool.map(run_case, CASES)))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "k{}-s{}-ic{}-{}-t{}".format(*c))
def test_weight_and_input_gradients_match_float64(outcomes, case):
    returncode, output = outcomes[case]
    assert returncode == 0, f"{case}: exit {returncode}: {output}"
