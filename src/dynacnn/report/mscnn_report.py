"""MS-CNN report: markdown tables (Table II / III analogs, policies, CAP_CONV, dynamic bits) and Figs. 3-9, from mscnn.json."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from dynacnn.flops import format_count
from dynacnn.io import write_text
from dynacnn.report.mscnn_tables import eq1_section, pct5, whole_network_section
from dynacnn.report.render import pct, save_figure, table

DPI = 110

FAMILY_COLORS = {
    "TP-C5": "C0",
    "TP-C1": "C1",
    "uniform-C5": "C7",
    "uniform-C1": "C8",
    "CAP_FC": "C2",
    "PTHP": "C3",
    "full": "k",
}


def _settings(settings: dict) -> str:
    return "; ".join(f"{k}={v}" for k, v in settings.items()) or "-"


def plot_tradeoff(out: Path, result: dict) -> str:
    """Figs. 5, 6, 8: calibration top-1 against average MACs and parameters per image, frontier, oracle, chosen."""
    fig = Figure(figsize=(12, 4.5))
    for panel, (column, label) in enumerate(((0, "MACs per image (M)"), (2, "parameters read per image (M)"))):
        ax = fig.add_subplot(1, 2, panel + 1)
        for name, points in result["all_calib"].items():
            color = FAMILY_COLORS.get(name, "C4")
            ax.scatter(
                [p[column] / 1e6 for p in points], [100 * p[1] for p in points], s=5, alpha=0.3, color=color, label=name
            )
            front = sorted((p[column] / 1e6, p[1]) for p in points)
            best, line = -1.0, []
            for x, y in front:
                if y > best:
                    best, line = y, line + [(x, y)]
            ax.plot([x for x, _ in line], [100 * y for _, y in line], "-", color=color, lw=1)
        oracle = result["oracle"]["calib"]
        ax.scatter(
            [oracle["macs_per_image" if column == 0 else "params_per_image"] / 1e6],
            [100 * oracle["top1"]],
            marker="*",
            s=150,
            color="gold",
            edgecolor="k",
            label="oracle",
            zorder=5,
        )
        chosen = result["chosen"]
        if column == 0:
            ax.scatter(
                [chosen["calib_macs_per_image"] / 1e6],
                [100 * chosen["calib_top1"]],
                marker="D",
                s=60,
                facecolor="none",
                edgecolor="k",
                label=f"chosen ({chosen['policy']})",
                zorder=5,
            )
        full = result["full"]
        ax.axhline(100 * full["calib_top1"], color="k", ls=":", lw=0.8)
        low = 100 * min(s["calib_top1"] for s in result["stages"]) - 1
        ax.set_ylim(low, 100 * max(oracle["top1"], full["calib_top1"]) + 0.5)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 (%) on the calibration split")
        if panel == 0:
            ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, out / "mscnn_tradeoff.png", dpi=DPI).name


def plot_rank(out: Path, result: dict) -> str:
    """Fig. 3: PR mean and mean + 2 std per class at stage 1, their maxima per stage, and P(MC | P_th = L)."""
    rank = result["prediction_rank"]
    fig = Figure(figsize=(14, 3.5))
    ax = fig.add_subplot(1, 4, 1)
    mean, std = rank["pr_mean"][0], rank["pr_std"][0]
    order = sorted(range(len(mean)), key=lambda c: -mean[c])
    ax.plot([mean[c] for c in order], "o-", label="PR mean")
    ax.plot([mean[c] + 2 * std[c] for c in order], "s--", label="PR mean + 2 std")
    ax.set(title="(a) stage 1, classes by PR mean", xlabel="class (sorted)", ylabel="prediction rank")
    ax.legend(fontsize=7)
    stages = range(1, len(rank["max_pr_mean"]) + 1)
    for index, (key, title) in enumerate(
        (("max_pr_mean", "(b) max PR mean"), ("max_pr_mean_2std", "(c) max PR mean + 2 std"))
    ):
        ax = fig.add_subplot(1, 4, 2 + index)
        ax.bar(list(stages), rank[key])
        ax.set(title=title, xlabel="stage")
    ax = fig.add_subplot(1, 4, 4)
    for stage, row in enumerate(rank["p_mc"]):
        ax.plot(range(1, len(row) + 1), row, "o-", ms=3, label=f"stage {stage + 1}")
    ax.set(title="P(MC | P_th = L), Eq. 1", xlabel="L", yscale="log")
    ax.legend(fontsize=7)
    return save_figure(fig, out / "mscnn_rank.png", dpi=DPI).name


def plot_bits(out: Path, result: dict) -> str:
    """Fig. 4: each stage's top-1 against the bit-length of its parameters."""
    sweep = result["bits"]["sweep"]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for stage, curve in enumerate(sweep["top1"]):
        bits = sorted(curve, key=int)
        ax.plot([int(b) for b in bits], [100 * curve[b] for b in bits], "o-", ms=3, label=f"stage {stage + 1}")
    ax.set(xlabel="parameter bit-length", ylabel="top-1 (%), calibration subset")
    ax.legend(fontsize=7)
    return save_figure(fig, out / "mscnn_bits.png", dpi=DPI).name


def plot_cap_conv(out: Path, result: dict) -> str:
    """Fig. 7: smart (context-aware) against ignorant filter pruning of every stage's last CONV layer."""
    rows = result["cap_conv"]
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    for p_th in sorted({r["p_th"][0] for r in rows}):
        group = [r for r in rows if r["p_th"][0] == p_th]
        ax.plot(
            [r["rm"] for r in group], [100 * r["smart_test_top1"] for r in group], "o-", label=f"smart, P_th={p_th}"
        )
    group = [r for r in rows if r["p_th"][0] == rows[0]["p_th"][0]]
    ax.plot(
        [r["rm"] for r in group], [100 * r["ignorant_test_top1"] for r in group], "s--", color="k", label="ignorant"
    )
    ax.axhline(100 * result["full"]["top1"], color="k", ls=":", lw=0.8, label="no pruning")
    ax.set(xlabel="filters removed per stage (rm)", ylabel="top-1 (%), test")
    ax.legend(fontsize=8)
    return save_figure(fig, out / "mscnn_cap_conv.png", dpi=DPI).name


def plot_timing(out: Path, result: dict) -> str:
    """Fig. 9: top-1 against measured time per image of frontier policies."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for family in sorted({row["name"] for row in result["timing"]}):
        rows = [row for row in result["timing"] if row["name"] == family]
        color = FAMILY_COLORS.get(family.split("-")[0] if family.startswith("PTHP") else family, "C4")
        ax.scatter([r["ms_per_image"] for r in rows], [100 * r["top1"] for r in rows], color=color, s=15, label=family)
    if result["timing"]:
        ax.axvline(result["timing"][0]["full_ms_per_image"], color="k", ls=":", lw=0.8, label="full network")
    ax.set(xlabel="measured ms per image (CPU, batch 256)", ylabel="top-1 (%), calibration")
    ax.legend(fontsize=8)
    return save_figure(fig, out / "mscnn_timing.png", dpi=DPI).name


def _table2_section(rows: list[dict]) -> list[str]:
    """Table II's 7-stage AlexNet widths built with our stage blocks (3x3 convs, strides 2, 2, 2, 1, maps pooled
    to 6x6), at 224 px: parameters match the paper's; MACs differ because AlexNet's 11x11 and 5x5 kernels are not used."""
    if not rows:
        return []
    return [
        "\nTable II configuration (`table2_config()`, 224 px, counted on the meta device):\n\n",
        table(
            ["stage", "params", "paper params", "MACs", "paper FLOPs"],
            [
                [
                    r["stage"],
                    format_count(r["params"]),
                    format_count(r["paper_params"]),
                    format_count(r["macs"]),
                    format_count(r["paper_flops"]),
                ]
                for r in rows
            ],
        ),
    ]


def _ranking(result: dict) -> str:
    ranking = result.get("cap_conv_ranking")
    return "the calibration split" if ranking is None else f"{ranking['images']} images of the {ranking['split']} split"


def _at_bits(row: dict, key: str) -> str:
    """A stage's accuracy at its saturation bit-length, with float in brackets ('-' before top-5 was recorded)."""
    if key not in row:
        return "-"
    return f"{pct(row[key])} ({pct(row['float_' + key])})"


def markdown(result: dict, plots: list[str]) -> str:
    """The mscnn.md report."""
    full, chosen, oracle = result["full"], result["chosen"], result["oracle"]
    parts = [
        "# MS-CNN report\n\n",
        f"{result['mac_note']}. Accuracies on the test split unless marked calib.\n",
        "\n## Stages (Table II analog)\n\n",
        table(
            ["stage", "band", "params", "MACs", "cumulative MACs", "top-1", "top-5", "calib top-1", "calib top-5"],
            [
                [
                    s["stage"],
                    s["band"],
                    format_count(s["params"]),
                    format_count(s["macs"]),
                    format_count(s["cumulative_macs"]),
                    pct(s["top1"]),
                    pct5(s.get("top5")),
                    pct(s["calib_top1"]),
                    pct5(s.get("calib_top5")),
                ]
                for s in result["stages"]
            ],
        ),
        *_table2_section(result.get("table2", [])),
        "\n## Full network, oracle and chosen policy\n\n",
        table(
            ["", "top-1", "top-5", "MACs / image", "MAC fraction", "images/s"],
            [
                [
                    "full MS-CNN",
                    pct(full["top1"]),
                    pct5(full.get("top5")),
                    format_count(full["macs_per_image"]),
                    "100%",
                    f"{full['images_per_s']:.0f}",
                ],
                [
                    "oracle (bound)",
                    pct(oracle["top1"]),
                    "-",
                    format_count(oracle["macs_per_image"]),
                    pct(oracle["macs_per_image"] / full["macs_per_image"]),
                    "-",
                ],
                [
                    f"chosen {chosen['policy']}",
                    pct(chosen["top1"]),
                    pct5(chosen.get("top5")),
                    format_count(chosen["macs_per_image"]),
                    pct(chosen["macs_fraction"]),
                    f"{chosen['images_per_s']:.0f}",
                ],
                [
                    f"prior art: uniform D_ct ({result['uniform_chosen']['name']}, same rule)",
                    pct(result["uniform_chosen"]["top1"]),
                    pct5(result["uniform_chosen"].get("top5")),
                    format_count(result["uniform_chosen"]["macs_per_image"]),
                    pct(result["uniform_chosen"]["macs_per_image"] / full["macs_per_image"]),
                    "-",
                ],
            ],
        ),
        f"\nChosen on the calibration split as the cheapest policy whose top-1 drop plus {chosen['drop_z']} standard errors "
        f"is at most --max-drop {chosen['max_drop']} points (its calibration drop: {100 * chosen['calib_drop']:.2f} "
        f"+- {100 * chosen['calib_drop_se']:.2f} points): {_settings(chosen['settings'])}; "
        f"measured speed-up {chosen['speedup']:.2f}x (paired chunks at batch 256, BatchNorm folded); exits per stage "
        f"{[round(f, 3) for f in chosen['exit_fractions']]}; executed vs cached agreement {pct(chosen['agreement_with_cached'])}; "
        f"counted MACs of the first batch {chosen['counted_macs_first_batch']} vs modelled {chosen['modelled_macs_first_batch']:.0f}.\n",
        "\n## Policy frontiers (Figs. 5, 6, 8)\n\n",
        table(
            [
                "policy",
                "settings",
                "calib top-1",
                "calib top-5",
                "top-1",
                "top-5",
                "MACs / image",
                "MAC fraction",
                "params / image",
            ],
            [
                [
                    r["name"],
                    _settings(r["settings"]),
                    pct(r["calib_top1"]),
                    pct5(r.get("calib_top5")),
                    pct(r["top1"]),
                    pct5(r.get("top5")),
                    format_count(r["macs_per_image"]),
                    pct(r["macs_per_image"] / full["macs_per_image"]),
                    format_count(r["params_per_image"]),
                ]
                for r in result["policies"]
                if r["frontier"] or r["name"] == "full"
            ],
        ),
        *eq1_section(result),
        "\n## CAP_CONV: smart against ignorant filter pruning (Fig. 7)\n\n",
        table(
            [
                "rm",
                "P_th",
                "MACs / image",
                "smart top-1",
                "ignorant top-1",
                "smart top-5",
                "ignorant top-5",
                "smart calib",
                "ignorant calib",
            ],
            [
                [
                    r["rm"],
                    r["p_th"],
                    format_count(r["macs_per_image"]),
                    pct(r["smart_test_top1"]),
                    pct(r["ignorant_test_top1"]),
                    pct5(r.get("smart_test_top5")),
                    pct5(r.get("ignorant_test_top5")),
                    pct(r["smart_calib_top1"]),
                    pct(r["ignorant_calib_top1"]),
                ]
                for r in result["cap_conv"]
            ],
        ),
        f"\nFilter ranking (Alg. 3 Pre) fitted on {_ranking(result)}; policies chosen on the calibration split.\n",
        "\n## Bit-lengths (Fig. 4, Table III analog)\n\n",
        f"Symmetric per-tensor fixed point; saturation = shortest bit-length within {100 * result['bits']['tolerance']:.1f} points "
        f"of float on {result['bits']['images']} calibration images.\n\n",
        table(
            [
                "stage",
                "saturation bits",
                "top-1 (float)",
                "top-5 (float)",
                "params",
                "size at 32 bits (MB)",
                "size at saturation (MB)",
            ],
            [
                [
                    r["stage"],
                    r["saturation_bits"],
                    _at_bits(r, "top1"),
                    _at_bits(r, "top5"),
                    format_count(r["params"]),
                    f"{r['size_mb_32']:.3f}",
                    f"{r['size_mb_bits']:.3f}",
                ]
                for r in result["bits"]["stages"]
            ],
        ),
        *whole_network_section(result["bits"]),
        "\nDynamic variant (calibration split): last-FC rows of classes outside the previous stage's top-`keep` at `low_bits`.\n\n",
        table(
            ["keep", "low bits", "final top-1", "final top-5", "last-FC kB / image", "static kB / image"],
            [
                [
                    r["keep"],
                    r["low_bits"],
                    pct(r["top1"]),
                    pct5(r.get("top5")),
                    f"{r['fc_kb_per_image']:.2f}",
                    f"{r['static_fc_kb_per_image']:.2f}",
                ]
                for r in result["bits"]["dynamic"]
            ],
        ),
        "\n## Prediction rank (Eq. 1-3, calibration split)\n\n",
        table(
            ["stage", "max PR mean", "max PR mean + 2 std"]
            + [f"L for P(MC) <= {t}" for t in result["prediction_rank"]["picked_l"]],
            [
                [i + 1, f"{m:.2f}", f"{s:.2f}", *[v[i] for v in result["prediction_rank"]["picked_l"].values()]]
                for i, (m, s) in enumerate(
                    zip(result["prediction_rank"]["max_pr_mean"], result["prediction_rank"]["max_pr_mean_2std"])
                )
            ],
        ),
        "\n## Plots\n\n",
        *[f"![{p}]({p})\n" for p in plots],
    ]
    return "".join(parts)


def write_report(out: str | os.PathLike, result: dict) -> list[str]:
    """Write mscnn.md and the PNG plots into `out`; returns the written file names."""
    out = Path(out)
    plots = [
        plot_tradeoff(out, result),
        plot_rank(out, result),
        plot_bits(out, result),
        plot_cap_conv(out, result),
        plot_timing(out, result),
    ]
    write_text(out / "mscnn.md", markdown(result, plots))
    return ["mscnn.md", *plots]
