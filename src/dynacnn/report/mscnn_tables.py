"""MS-CNN report sections: the whole network at the chosen bit vector (§IV-C) and Eq. 1's P_th among the candidates."""

from __future__ import annotations

from dynacnn.flops import format_count
from dynacnn.report.render import pct, table


def pct5(value: float | None) -> str:
    """A percentage, or '-' where a result predates top-5."""
    return "-" if value is None else pct(value)


def _settings(settings: dict) -> str:
    return "; ".join(f"{k}={v}" for k, v in settings.items()) or "-"


def whole_network_section(bits: dict) -> list[str]:
    """Table: the whole MS-CNN (every stage at its bit-length, concatenated features included) beside float."""
    whole = bits.get("whole_network")
    if not whole:
        return []
    tolerance = 100 * whole["tolerance"]
    lines = [
        "\n### Whole network at the chosen bit vector\n\n",
        f"Every stage converted at once (saturation vector {whole['saturation_bits']}), later classifiers reading "
        f"the fixed-point features of earlier stages; full network (no exits) and the chosen policy "
        f"({whole['policy']}: {_settings(whole['settings'])}); drop = paired top-1 drop against float, in points.\n\n",
        table(
            ["vector", "bits", "split", "policy", "top-1", "top-5", "MACs / image", "drop (points)"],
            [
                [
                    r["vector"],
                    "float" if r["bits"] is None else r["bits"],
                    r["split"],
                    r["policy"],
                    pct(r["top1"]),
                    pct5(r.get("top5")),
                    format_count(r["macs_per_image"]),
                    f"{100 * r['drop']:.2f} +- {100 * r['drop_se']:.2f}",
                ]
                for r in whole["rows"]
            ],
        ),
        f"\nParameter size: {whole['size_mb_32']:.3f} MB at 32 bits, {whole['size_mb_saturation']:.3f} MB at the "
        f"saturation vector, {whole['size_mb']:.3f} MB at the final vector {whole['bits']}.\n",
    ]
    if whole["saturation_within_tolerance"]:
        lines.append(f"At the saturation vector both stay within {tolerance:.1f} points of float on calib.\n")
    else:
        lines.append(
            f"At the saturation vector the whole network falls more than {tolerance:.1f} points below float on calib "
            f"(worst drop with only one stage at {max(whole['levels'])} bits, per stage: "
            f"{[round(100 * d, 2) for d in whole['stage_sensitivity']]} points): raise stage {whole['raise_first']} "
            f"first. Raised greedily on calib: {[(s['stage'], s['bits']) for s in whole['raise_steps']]}; "
            + ("now within the tolerance.\n" if whole["within_tolerance"] else "still outside the tolerance.\n")
        )
    return lines


def eq1_section(result: dict) -> list[str]:
    """Table: Eq. 1's CAP_FC candidates beside the grid, and the winners of the --max-drop rule."""
    eq1 = result.get("cap_fc_eq1")
    if not eq1:
        return []
    rows = [
        [
            ", ".join(c["targets"]),
            c["p_th"],
            pct(c["calib_top1"]),
            pct5(c.get("calib_top5")),
            format_count(c["calib_macs_per_image"]),
            "-" if c["best_grid_top1_at_most_its_macs"] is None else pct(c["best_grid_top1_at_most_its_macs"]),
            "yes" if c["on_frontier"] else "no",
            pct(c["top1"]),
            pct5(c.get("top5")),
        ]
        for c in eq1["candidates"]
    ]
    winners = [
        f"{label}: {w['name']} ({_settings(w['settings'])}, calib top-1 {pct(w['calib_top1'])}, "
        f"{format_count(w['calib_macs_per_image'])} MACs)"
        for label, w in (("among CAP_FC (grid + Eq. 1)", eq1["cap_fc_winner"]), ("among PTHP", eq1["pthp_winner"]))
    ]
    return [
        '\nEq. 1\'s P_th as CAP_FC candidates ("CAP_FC eq1"; "PTHP eq1": TP exits with the same pruning):\n\n',
        table(
            [
                "P(MC) target",
                "P_th",
                "calib top-1",
                "calib top-5",
                "calib MACs",
                "best grid top-1 at <= MACs",
                "on frontier",
                "top-1",
                "top-5",
            ],
            rows,
        ),
        f"\nWinners of the --max-drop rule: {'; '.join(winners)}. The overall choice "
        f"{'is' if eq1['chosen_is_eq1'] else 'is not'} an Eq. 1 candidate.\n",
    ]
