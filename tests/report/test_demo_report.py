"""The demo report's summary rows and verdict: top-5 where known, and per method whether routing beats shrinking."""

from __future__ import annotations

import pytest

from dynacnn.experiments.baselines import compare_with_static
from dynacnn.report.demo_report import LABELS, _row, _static_rows, verdict

BASE = {"top1": 0.92, "top5": 0.998, "macs_per_image": 8e6, "width": 0.25, "images_per_s": 1000.0}
MATCHED = {"top1": 0.90, "top5": 0.997, "macs_per_image": 3e6, "width": 0.15625, "images_per_s": 2000.0}


def _report(cp_top1: float, ms_top1: float) -> dict:
    chosen = {
        "cpcnn": {"top1": cp_top1, "top5": 0.99, "macs_per_image": 3.2e6, "tau": 0.3},
        "mscnn": {"top1": ms_top1, "macs_per_image": 2.9e6, "policy": "TP-C1"},
    }
    return {
        "base": BASE,
        "cpcnn": {"chosen": chosen["cpcnn"]},
        "mscnn": {"chosen": chosen["mscnn"]},
        "baselines": {
            "compute_matched": MATCHED,
            "per_method": compare_with_static(chosen, [BASE, MATCHED]),
            "uniform_threshold_exit": {},
        },
    }


def test_verdict_says_per_method_whether_routing_wins_by_the_margin():
    report = _report(cp_top1=0.915, ms_top1=0.895)
    static = {m: c["static"] for m, c in report["baselines"]["per_method"]["methods"].items()}
    assert static["cpcnn"]["kind"] == "interpolated" and static["mscnn"]["kind"] == "extrapolated"
    words = verdict(report)
    cp, ms = words.split(". At ")
    cp_gap = 100 * (0.915 - static["cpcnn"]["top1"])
    ms_gap = 100 * (static["mscnn"]["top1"] - 0.895)
    assert cp_gap >= 0.5 and f"{cp_gap:.2f} points more accurate" in cp and "routing beats" in cp
    assert ms_gap > 0 and f"{ms_gap:.2f} points less accurate" in ms and "does as well or better" in ms


@pytest.mark.parametrize("gap", [0.1, 0.49])
def test_a_small_gain_is_short_of_the_margin(gap):
    report = _report(cp_top1=0.0, ms_top1=0.9)
    static_top1 = report["baselines"]["per_method"]["methods"]["cpcnn"]["static"]["top1"]
    report = _report(cp_top1=static_top1 + gap / 100, ms_top1=0.9)
    cp = verdict(report).split(". At ")[0]
    assert "more accurate, short of the 0.5 points asked" in cp and "routing beats" not in cp


def test_rows_show_top5_only_where_known_and_mark_interpolated_speed():
    report = _report(cp_top1=0.915, ms_top1=0.895)
    assert _row("m", report["mscnn"]["chosen"], BASE).split(" | ")[2] == "-"
    assert "99.00%" in _row("c", report["cpcnn"]["chosen"], BASE, 1500.0, 1.4)
    rows = _static_rows(report)
    assert len(rows) == 2 and all("~" in row and row.endswith("| - |") for row in rows)


def test_with_a_distilled_static_network_the_verdict_says_so_and_gives_the_plain_gaps():
    report = _report(cp_top1=0.915, ms_top1=0.895)
    distilled = {**MATCHED, "top1": 0.91, "teacher": "base"}
    chosen = {m: report[m]["chosen"] for m in ("cpcnn", "mscnn")}
    plain = report["baselines"]["per_method"]
    report["baselines"].update(
        compute_matched_distilled=distilled,
        per_method=compare_with_static(chosen, [BASE, distilled]),
        per_method_plain=plain,
    )
    words = verdict(report)
    assert words.count("a static ResNet (distilled from the base)") == 2
    gaps = ", ".join(f"{name} {plain['methods'][m]['gap_points']:+.2f}" for m, name in LABELS.items())
    assert f"trained on labels alone (the base's recipe) the gaps are {gaps} points" in words
    rows = _static_rows(report)
    assert len(rows) == 4 and sum("(distilled from the base)" in row for row in rows) == 2
    assert sum("(labels only)" in row for row in rows) == 2


@pytest.mark.parametrize("heads, static", [(16, 5), (5, 5), (4, 5), (None, 5)])
def test_the_verdict_warns_when_the_heads_trained_longer_than_the_static_networks(heads, static):
    report = _report(cp_top1=0.915, ms_top1=0.895)
    report["cpcnn"]["settings"] = {} if heads is None else {"epochs": heads}
    report["settings"] = {"recipe": {"epochs": static}}
    words = verdict(report)
    warned = f"trained {heads} epochs on S's outputs, the static networks the base's {static}: part of" in words
    assert warned == (heads is not None and heads > static)
