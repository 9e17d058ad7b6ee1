"""CP-CNN report, policy part: Table 2 with the paper's Alg. 1 + Eq. 3 beside ours and the calibration choice."""

from __future__ import annotations

from typing import Any

from dynacnn.flops import format_count
from dynacnn.report.render import pct, table

PAPER = ("confusion", "eq3")
OURS = ("top", "clustifier")


def maybe_pct(value: float | None) -> str:
    """`pct`, or an empty cell where a figure was not recorded."""
    return "" if value is None else pct(value)


def policy_label(rule: str, weighting: str) -> str:
    """The paper's Alg. 1 + Eq. 3, ours, or "rule / weighting"."""
    if (rule, weighting) == PAPER:
        return "paper: Alg. 1 + Eq. 3 (confusion / eq3)"
    if (rule, weighting) == OURS:
        return "ours: top / clustifier"
    return f"{rule} / {weighting}"


def policy_table_markdown(result: dict[str, Any]) -> str:
    """Each rule x weighting at its own calibration-chosen tau: calibration and test top-1, top-5 and MACs; * = the
    combination the calibration split chose (test figures are reported, never used to choose)."""
    rows = result.get("table2_policies") or []
    if not rows:
        return ""
    choice = result.get("policy_choice", {})
    requested = choice.get("requested", {})
    base = result["base"]
    body = [
        [
            ("**" + policy_label(r["rule"], r["weighting"]) + "\\***")
            if r["chosen"]
            else policy_label(r["rule"], r["weighting"]),
            f"{r['tau']:g}",
            pct(r["calib"]["top1"]),
            maybe_pct(r["calib"].get("top5")),
            format_count(r["calib"]["macs_per_image"]),
            "yes" if r["meets_max_drop"] else "no",
            "yes" if r["eligible"] else "no",
            pct(r["test"]["top1"]),
            maybe_pct(r["test"].get("top5")),
            format_count(r["test"]["macs_per_image"]),
            pct(1 - r["test"]["macs_per_image"] / base["macs_per_image"]),
        ]
        for r in rows
    ]
    body.append(
        [
            "base model",
            "",
            pct(base["calib_top1"]),
            maybe_pct(base.get("calib_top5")),
            format_count(base["macs_per_image"]),
            "",
            "",
            pct(base["top1"]),
            maybe_pct(base.get("top5")),
            format_count(base["macs_per_image"]),
            pct(0.0),
        ]
    )
    header = [
        "policy (rule / weighting)",
        "tau (calib)",
        "calib top-1",
        "calib top-5",
        "calib MACs",
        "meets max_drop",
        "allowed",
        "test top-1",
        "test top-5",
        "test MACs",
        "MAC saving",
    ]
    asked = f"rule {requested.get('rule', '?')}, weighting {requested.get('weighting', '?')}"
    return (
        "\n## Table 2 by policy: the paper's Alg. 1 + Eq. 3 beside ours, each at its own calibration-chosen tau\n\n"
        + table(header, body)
        + f"\nRequested: {asked} (auto: chosen here). Each combination's tau is the cheapest of the selection taus "
        "whose calibration top-1 meets max_drop (counting the paired standard errors); of the allowed combinations "
        "the cheapest that meets it is chosen (*; ties: higher calibration top-1). The test columns are measured "
        "at the calibration-chosen tau and play no part in any choice.\n"
    )
