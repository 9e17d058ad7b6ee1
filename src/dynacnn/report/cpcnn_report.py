"""CP-CNN report: markdown tables (Table 1, Table 2, policy comparison, split sweep) and Fig. 4 plots, from cpcnn.json."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from dynacnn.flops import format_count
from dynacnn.io import ensure_dir, write_text
from dynacnn.report.cpcnn_policy_report import maybe_pct, policy_table_markdown
from dynacnn.report.render import pct, save_figure, table

TABLE1_GAP = (
    "Table 1's reduction row, printed under the headers L0, L1, L2, L22, L3, L33, L4, L44, only matches a count "
    "when read in the order L0, L1, L2, L3, L4, L22, L33, L44 (as printed, L3 would save more than L4, which "
    "replaces a superset of L3's stages by the same blocks). The bottleneck-compression block of L22 / L33 / L44 "
    "spans layer3 + layer4 (two consecutive bottlenecks replaced by one block, halving twice) and L44's first "
    "bottleneck spans layer1 + layer2; Table 1 draws such a block in both stages' rows. With that reading, "
    "every configuration is within 0.4 points of the paper; the remaining gap (ours always slightly larger) "
    "is in the counting convention: we count convolutions and the FC only (MACs = flop_counter FLOPs / 2)."
)


def table1_reproduction_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Table 1 (bottom) reproduced: ResNet-18, ImageNet stem, 224x224, our MAC reduction beside the paper's."""
    body = table(
        [
            "config",
            "blocks replaced (Table 1)",
            "MACs",
            "params",
            "our reduction",
            "paper (reordered)",
            "paper (as printed)",
        ],
        [
            [
                r["name"],
                r["blocks"],
                format_count(r["macs"]),
                format_count(r["params"]),
                pct(r["reduction"]),
                pct(r["paper_reduction"]),
                pct(r["paper_printed"]),
            ]
            for r in rows
        ],
        ["---", "---", "---:", "---:", "---:", "---:", "---:"],
    )
    return (
        "### Table 1 reproduction: ResNet-18, ImageNet stem, 224x224, S = stem, 100 classes\n\n"
        + body
        + "\n"
        + TABLE1_GAP
        + "\n"
    )


def plot_fig4(out: Path, result: dict[str, Any]) -> list[str]:
    """Fig. 4: top-1 and MACs against tau (test), and the MAC breakdown per hyper-class."""
    rows, base = result["sweep"], result["base"]
    taus = [row["tau"] for row in rows]
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    ax.plot(taus, [100 * row["top1"] for row in rows], "o-", color="C0", label="CP-CNN top-1")
    ax.axhline(100 * base["top1"], color="C0", ls="--", lw=1, label="base top-1")
    ax.axhline(100 * result["oracle"]["top1"], color="C2", ls=":", lw=1, label="oracle top-1")
    ax.set_xlabel("tau (confidence-sum threshold, Eq. 1)")
    ax.set_ylabel("test top-1 (%)")
    twin = ax.twinx()
    twin.plot(taus, [row["macs_per_image"] / 1e6 for row in rows], "s-", color="C3", label="CP-CNN MACs")
    twin.axhline(base["macs_per_image"] / 1e6, color="C3", ls="--", lw=1, label="base MACs")
    twin.set_ylabel("MACs per image (M)")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    fig.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=7)
    ax.set_title(f"{result['policy']['rule']} rule, {result['policy']['weighting']} weighting, split {result['split']}")
    save_figure(fig, out / "fig4_accuracy_macs.png")

    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    bottom = [result["costs"]["shared"] / 1e6 + result["costs"]["clustifier"] / 1e6] * len(rows)
    ax.bar(range(len(rows)), bottom, color="0.7", label="S + M")
    for g, names in enumerate(result["clusters"]):
        heights = [row["head_macs_per_image"][g] / 1e6 for row in rows]
        label = f"H{g}: " + ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
        ax.bar(range(len(rows)), heights, bottom=bottom, label=label)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.axhline(base["macs_per_image"] / 1e6, color="k", ls="--", lw=1, label="base")
    ax.set_xticks(range(len(rows)), [f"{t:g}" for t in taus])
    ax.set_xlabel("tau")
    ax.set_ylabel("MACs per image (M), test")
    ax.legend(fontsize=6, loc="upper left")
    save_figure(fig, out / "fig4_mac_breakdown.png")
    return ["fig4_accuracy_macs.png", "fig4_mac_breakdown.png"]


def plot_policies(out: Path, result: dict[str, Any]) -> str:
    """Calibration top-1 against MACs for each activation rule and weighting, over tau."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    combos = sorted({(r["rule"], r["weighting"]) for r in result["policy_comparison"]})
    for rule, weighting in combos:
        rows = [
            r
            for r in result["policy_comparison"]
            if r["split"] == "calib" and (r["rule"], r["weighting"]) == (rule, weighting)
        ]
        ax.plot(
            [r["macs_per_image"] / 1e6 for r in rows],
            [100 * r["top1"] for r in rows],
            "o-",
            ms=3,
            label=f"{rule} / {weighting}",
        )
    ax.axhline(100 * result["base"]["calib_top1"], color="k", ls="--", lw=1, label="base")
    ax.set_xlabel("MACs per image (M)")
    ax.set_ylabel("calibration top-1 (%)")
    ax.legend(fontsize=7)
    ax.set_title("activation rule / weighting, tau from 0.3 to 1")
    save_figure(fig, out / "policies.png")
    return "policies.png"


def plot_split_sweep(out: Path, result: dict[str, Any]) -> str:
    """The shared-layer sweep: calibration top-1 against MACs, annotated with the measured speed-up."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for row in result["split_sweep"]:
        ax.plot(row["macs_per_image"] / 1e6, 100 * row["calib_top1"], "o", color="C0")
        ax.annotate(
            f"{row['split']} (tau {row['tau']:g}, {row['speedup']:.2f}x)",
            (row["macs_per_image"] / 1e6, 100 * row["calib_top1"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.axhline(100 * result["base"]["calib_top1"], color="k", ls="--", lw=1, label="base")
    ax.set_xlabel("MACs per image (M), uncompressed heads")
    ax.set_ylabel("calibration top-1 (%)")
    ax.legend(fontsize=7)
    save_figure(fig, out / "split_sweep.png")
    return "split_sweep.png"


def report_markdown(result: dict[str, Any], plots: Sequence[str]) -> str:
    """cpcnn.md: the chosen point, clusters, split sweep, Table 1 analog, Table 2, policy comparison, Table 1 reproduction."""
    base, chosen = result["base"], result["chosen"]
    groups = len(result["clusters"])
    parts = [f"# CP-CNN on {result['dataset']}\n"]
    parts.append(
        table(
            ["model", "test top-1", "test top-5", "MACs / image", "images/s (batch 256)"],
            [
                [
                    "base",
                    pct(base["top1"]),
                    maybe_pct(base.get("top5")),
                    format_count(base["macs_per_image"]),
                    f"{chosen['base_images_per_s']:.0f}",
                ],
                [
                    f"CP-CNN (split {result['split']}, tau {chosen['tau']:g})",
                    pct(chosen["top1"]),
                    maybe_pct(chosen.get("top5")),
                    format_count(chosen["macs_per_image"]),
                    f"{chosen['images_per_s']:.0f}",
                ],
            ],
        )
    )
    parts.append(
        f"\nTop-1 change {100 * chosen['top1_change']:+.2f} points, MAC saving {pct(chosen['mac_saving'])}, measured speed-up "
        f"{chosen['speedup']:.2f}x (median over paired chunks of timing images, same process). Policy: {chosen['rule']} rule, "
        f"{chosen['weighting']} weighting"
        + (" (chosen on the calibration split, Table 2 by policy)" if "auto" in _requested(result) else "")
        + "; tau chosen on the calibration split"
        + (
            f" as the cheapest within {chosen['max_drop']} points of the base model, counting the calibration drop plus"
            f" {chosen.get('drop_z', 0)} standard errors of the paired per-image difference (met: {chosen['meets_max_drop']})."
            if chosen["max_drop"] is not None
            else " (given)."
        )
        + "\n"
    )
    parts.append(
        "\n## Hyper-classes\n\n"
        + table(
            ["hyper-class", "classes", "head", "head MACs"],
            [
                [f"H{g}", ", ".join(names), result["configs"]["heads"][g], format_count(result["costs"]["heads"][g])]
                for g, names in enumerate(result["clusters"])
            ],
            ["---", "---", "---", "---:"],
        )
    )
    parts.append(
        f"\nShared part S: {format_count(result['costs']['shared'])} MACs; clustifier M ({result['configs']['clustifier']}): "
        f"{format_count(result['costs']['clustifier'])} MACs. The base model puts "
        f"{100 * result['base_cross_hyperclass_calib']:.1f}% of the calibration images in a class of another "
        "hyper-class than the true one: routing errors the clustifier has to avoid with features from S alone.\n"
    )
    parts.append(
        "\n## Shared-layer sweep (calibration split)\n\n"
        + table(
            [
                "split",
                "S MACs",
                "M",
                "M top-1 (hyper-class)",
                "tau",
                "top-1 (L0 heads)",
                "MACs (L0 heads)",
                "speed-up (L0 heads)",
                "most compressed heads",
                "MACs",
                "speed-up",
            ],
            [
                [
                    r["split"],
                    format_count(r["shared_macs"]),
                    r["clustifier"],
                    pct(r["clustifier_calib_top1"]),
                    f"{r['tau']:g}",
                    pct(r["calib_top1"]),
                    format_count(r["macs_per_image"]),
                    f"{r['speedup']:.2f}x",
                    r["compressed_config"],
                    format_count(r["compressed_macs_per_image"]),
                    f"{r['compressed_speedup']:.2f}x",
                ]
                for r in result["split_sweep"]
            ],
        )
        + "\nL0 heads are the backbone's own later stages restricted to each hyper-class (their accuracy needs no training); "
        "speed-ups are measured against the base model in the same process, with the same routing for both head choices. "
        f"The chosen split ({result['split']}) is the fastest with the most compressed heads among the splits whose "
        "calibration top-1 with L0 heads is within max_drop of the base model.\n"
    )
    names = list(dict.fromkeys(name for records in result["table1"].values() for name in records))
    rows = []
    for component, records in result["table1"].items():
        chosen_name = (
            result["configs"]["clustifier"]
            if component == "clustifier"
            else result["configs"]["heads"][int(component[1:])]
        )
        rows.append(
            [component]
            + [
                (f"**{records[n]['calib_top1']:.3f}\\***" if n == chosen_name else f"{records[n]['calib_top1']:.3f}")
                if n in records
                else ""
                for n in names
            ]
        )
        outputs = groups if component == "clustifier" else len(result["cluster_ids"][int(component[1:])])
        if outputs > 5:
            rows.append(
                [f"{component} top-5"]
                + [maybe_pct(records[n].get("calib_top5")) if n in records else "" for n in names]
            )
        rows.append([f"{component} MACs"] + [format_count(records[n]["macs"]) if n in records else "" for n in names])
    parts.append(
        "\n## Table 1 analog: calibration top-1 per configuration (within each hyper-class), * = selected\n\n"
        + table(["component", *names], rows)
        + "".join(
            f"\nClustifier {name} not trained: {reason}.\n"
            for name, reason in result.get("clustifier_skipped", {}).items()
        )
    )
    parts.append(
        "\nHead selection: per hyper-class, the cheapest configuration within the tolerance of its best; the "
        "tolerance is the largest tried whose CP-CNN keeps calibration top-1 within max_drop of the base model.\n\n"
        + table(
            ["tolerance (points)", "heads", "policy", "tau", "calib top-1", "MACs / image", "meets max_drop"],
            [
                [
                    f"{r['tolerance_points']:g}",
                    ", ".join(r["heads"]),
                    f"{r.get('rule', chosen['rule'])} / {r.get('weighting', chosen['weighting'])}",
                    f"{r['tau']:g}",
                    pct(r["calib_top1"]),
                    format_count(r["calib_macs_per_image"]),
                    r["meets_max_drop"],
                ]
                for r in result["tolerance_search"]
            ],
        )
    )
    hist_header = [f"#{i + 1}" for i in range(groups)]
    rows = [
        [
            f"{r['tau']:g}",
            *r["activated_hist"],
            pct(r["top1"]),
            maybe_pct(r.get("top5")),
            f"{100 * (r['top1'] - base['top1']):+.2f}",
            format_count(r["macs_per_image"]),
            pct(1 - r["macs_per_image"] / base["macs_per_image"]),
        ]
        for r in result["sweep"]
    ]
    for label, r in (("CC-ideal", result["cc_ideal"]), ("oracle", result["oracle"])):
        rows.append(
            [
                label,
                *r["activated_hist"],
                pct(r["top1"]),
                maybe_pct(r.get("top5")),
                f"{100 * (r['top1'] - base['top1']):+.2f}",
                format_count(r["macs_per_image"]),
                pct(1 - r["macs_per_image"] / base["macs_per_image"]),
            ]
        )
    parts.append(
        f"\n## Table 2: activated hyper-classes per test image ({chosen['rule']} / {chosen['weighting']}), accuracy "
        "gain and MAC saving against the base model\n\n"
        + table(["tau", *hist_header, "top-1", "top-5", "gain (points)", "MACs / image", "MAC saving"], rows)
        + "\nCC-ideal: only the clustifier's argmax head runs; oracle: only the true hyper-class's head runs "
        "(the bound no activation policy can beat).\n"
    )
    parts.append(policy_table_markdown(result))
    taus = sorted({r["tau"] for r in result["policy_comparison"]})
    for part in ("calib", "test"):
        rows = []
        for rule in sorted({r["rule"] for r in result["policy_comparison"]}):
            for weighting in sorted({r["weighting"] for r in result["policy_comparison"]}):
                cells = {
                    r["tau"]: r
                    for r in result["policy_comparison"]
                    if (r["split"], r["rule"], r["weighting"]) == (part, rule, weighting)
                }
                rows.append([f"{rule} / {weighting}", *[f"{100 * cells[t]['top1']:.2f}" for t in taus]])
                if all("top5" in cells[t] for t in taus):
                    rows.append([f"{rule} / {weighting}: top-5", *[f"{100 * cells[t]['top5']:.2f}" for t in taus]])
            cells = {r["tau"]: r for r in result["policy_comparison"] if (r["split"], r["rule"]) == (part, rule)}
            rows.append([f"{rule}: MACs", *[format_count(cells[t]["macs_per_image"]) for t in taus]])
        parts.append(
            f"\n## Activation rule and weighting ({part} split): top-1, top-5 (%) and MACs per image against tau\n\n"
            + table(["rule / weighting", *[f"{t:g}" for t in taus]], rows)
        )
    parts.append("\n" + table1_reproduction_markdown(result["table1_resnet18"]))
    parts.append("\n## Plots\n\n" + "".join(f"![{name}]({name})\n" for name in plots))
    parts.append("\n## Notes\n\n" + "".join(f"- {note}\n" for note in result["notes"]))
    return "".join(parts)


def _requested(result: dict[str, Any]) -> tuple[str, str]:
    """The rule and weighting the settings asked for ("auto": chosen on the calibration split)."""
    requested = result.get("policy_choice", {}).get("requested", {})
    return requested.get("rule", ""), requested.get("weighting", "")


def write_report(out_dir: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write cpcnn.md, table1_resnet18.md and the PNG plots into `out_dir`; return the markdown path."""
    out = ensure_dir(out_dir)
    plots = plot_fig4(out, result) + [plot_policies(out, result), plot_split_sweep(out, result)]
    write_text(out / "table1_resnet18.md", table1_reproduction_markdown(result["table1_resnet18"]))
    return write_text(out / "cpcnn.md", report_markdown(result, plots))
