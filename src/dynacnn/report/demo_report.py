"""The demo's report: report.json, report.md, the combined trade-off chart, and bench.json / bench.md."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dynacnn.io import write_json, write_text
from dynacnn.report.render import median_speedups, pct, save_figure, targets_table, timing_table

LABELS = {"cpcnn": "CP-CNN", "mscnn": "MS-CNN"}


def write_bench(out: str | os.PathLike, bench: dict[str, Any]) -> dict[str, Any]:
    """Write the benchmark's bench.json and bench.md (its timing table) into `out`; return `bench`."""
    out = Path(out)
    write_json(out / "bench.json", bench)
    targets = bench.get("targets")
    write_text(out / "bench.md", timing_table(bench["rows"]) + ("\n" + targets_table(targets) if targets else ""))
    return bench


def plot_tradeoff(path: str | os.PathLike, report: dict[str, Any]) -> Path:
    """One accuracy-against-MACs chart: every method, operating point, baseline and oracle bound."""
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    base, cp, ms = report["base"], report["cpcnn"], report["mscnn"]
    sweep = sorted(cp["sweep"], key=lambda r: r["macs_per_image"])
    ax.plot(
        [r["macs_per_image"] / 1e6 for r in sweep],
        [100 * r["top1"] for r in sweep],
        "o-",
        color="tab:blue",
        label="CP-CNN, tau sweep (calibration)",
    )
    policies = ms["policies"]
    ax.scatter(
        [r["macs_per_image"] / 1e6 for r in policies],
        [100 * r["top1"] for r in policies],
        s=8,
        color="tab:orange",
        alpha=0.4,
        label="MS-CNN policies (calibration)",
    )
    points = [
        ("base ResNet", base, "k", "s"),
        ("CP-CNN chosen (test)", cp["chosen"], "tab:blue", "*"),
        ("CP-CNN oracle routing", cp["oracle"], "tab:blue", "^"),
        ("MS-CNN full network", ms["full"], "tab:orange", "s"),
        ("MS-CNN chosen (test)", ms["chosen"], "tab:orange", "*"),
        ("MS-CNN oracle exit", ms["oracle"], "tab:orange", "^"),
        ("static ResNet (labels only)", report["baselines"]["compute_matched"], "tab:green", "D"),
    ]
    if report["baselines"].get("compute_matched_distilled"):
        points.append(
            (
                "static ResNet (distilled from the base)",
                report["baselines"]["compute_matched_distilled"],
                "tab:olive",
                "D",
            )
        )
    per_method = (report["baselines"].get("per_method") or {}).get("methods") or {}
    for method, compared in per_method.items():
        points.append(
            (f"static ResNet at the {LABELS.get(method, method)}'s MACs", compared["static"], "tab:olive", "X")
        )
    uniform = report["baselines"].get("uniform_threshold_exit") or {}
    if "top1" in uniform:
        points.append(("uniform-threshold exit (prior art)", uniform, "tab:red", "v"))
    for label, point, color, marker in points:
        ax.scatter(
            point["macs_per_image"] / 1e6,
            100 * point["top1"],
            color=color,
            marker=marker,
            s=110,
            edgecolor="k",
            zorder=5,
            label=label,
        )
    ax.set_xlabel("MACs per image (millions, counted)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{report['dataset']['name']}: accuracy against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110, tight=False)


def _row(
    name: str, point: dict[str, Any], base: dict[str, Any], speed: float | None = None, speedup: float | None = None
) -> str:
    """A summary row; images/s without a measured speed-up (an interpolated static point) is marked "~"."""
    speed_text = f"{speed:.0f} | {speedup:.2f}x" if speed and speedup else f"~{speed:.0f} | -" if speed else "- | -"
    top5 = "-" if point.get("top5") is None else pct(point["top5"])
    return (
        f"| {name} | {pct(point['top1'])} | {top5} | {point['macs_per_image'] / 1e6:.2f} M | "
        f"{base['macs_per_image'] / point['macs_per_image']:.2f}x | {speed_text} |"
    )


def static_recipe(report: dict[str, Any]) -> str:
    """How the static networks `per_method` reads from were trained: as the dynamic models, distilled from the base
    (reports made before that: the base's own recipe)."""
    return "distilled from the base" if report["baselines"].get("compute_matched_distilled") else "same recipe"


def _static_rows(report: dict[str, Any]) -> list[str]:
    """The static ResNet at each method's MACs (interpolated in log MACs between static networks of a recipe):
    trained as the dynamic models (`per_method`), then on labels alone (`per_method_plain`)."""
    rows = []
    for key, recipe in (("per_method", static_recipe(report)), ("per_method_plain", "labels only")):
        for method, compared in ((report["baselines"].get(key) or {}).get("methods") or {}).items():
            static = compared["static"]
            name = f"static ResNet ({recipe}) at the {LABELS.get(method, method)}'s MACs ({static['kind']})"
            rows.append(_row(name, static, report["base"], static.get("images_per_s")))
    return rows


def render_markdown(out: Path, report: dict[str, Any]) -> str:
    """report.md: what was gained and what it cost, then the detailed tables and plots of each method."""
    base, cp, ms, matched = report["base"], report["cpcnn"], report["mscnn"], report["baselines"]["compute_matched"]
    env, data, speed = report["environment"], report["dataset"], report["images_per_s_batch256"]
    speedup = median_speedups(report["bench"])
    lines = [
        f"# dynacnn demo report: {data['name']}",
        "",
        f"{data['sizes']['train']} training, {data['sizes']['calib']} calibration and {data['sizes']['test']} test images, "
        f"{data['num_classes']} classes. torch {env['torch']} on {env['device']} ({env['threads']} threads). "
        "Every threshold, cluster and policy was chosen on the calibration split; the test split was used once per model. "
        "MACs are counted with torch.utils.flop_counter (FLOPs / 2) over what actually ran; images/s are measured side by "
        "side in one process at batch 256; a wall-clock speed-up is the median, over chunks of test images, of the base's "
        "time over the model's time on the same chunk, moments apart (`bench.md`).",
        "",
        "## Summary (test split)",
        "",
        "| model | top-1 | top-5 | MACs/image | MAC speed-up | images/s | wall-clock speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        _row("base ResNet", base, base, speed["base"], speedup["base"]),
        _row(f"CP-CNN, tau = {cp['chosen']['tau']}", cp["chosen"], base, speed["cpcnn"], speedup["cpcnn"]),
        _row(f"MS-CNN, {ms['chosen']['policy']}", ms["chosen"], base, speed["mscnn"], speedup["mscnn"]),
        _row(f"static ResNet, width {matched['width']:g}", matched, base, speed["matched"], speedup["matched"]),
    ]
    distilled = report["baselines"].get("compute_matched_distilled")
    if distilled:
        name = f"static ResNet, width {distilled['width']:g}, distilled from the base"
        lines.append(_row(name, distilled, base, speed["matched"], speedup["matched"]))
    lines += _static_rows(report)
    uniform = report["baselines"].get("uniform_threshold_exit") or {}
    if "top1" in uniform:
        lines.append(_row("MS-CNN, uniform-threshold exit (prior art)", uniform, base))
    lines += [
        "",
        verdict(report),
        "",
        "![accuracy against MACs](tradeoff.png)",
        "",
        "## Side-by-side benchmark",
        "",
        timing_table(report["bench"]) if report.get("bench") else "",
        "",
    ]
    if report.get("speed_targets"):
        lines += ["### Speed targets, per runtime (paired medians)", "", targets_table(report["speed_targets"]), ""]
    for folder in ("cpcnn", "mscnn"):
        lines += [embedded_markdown(out / folder / f"{folder}.md", folder), ""]
        linked = set(re.findall(r"\]\(([^)]+)\)", lines[-2]))
        lines += [
            f"![{png.stem.replace('_', ' ')}]({folder}/{png.name})"
            for png in sorted((out / folder).glob("*.png"))
            if f"{folder}/{png.name}" not in linked
        ]
        lines.append("")
    return "\n".join(lines) + "\n"


def embedded_markdown(path: Path, folder: str) -> str:
    """A method's own markdown report, headings demoted one level and relative links re-rooted at `folder`."""
    if not path.exists():
        return f"({path.name} was not written)"
    text = re.sub(r"^(#+) ", r"#\1 ", path.read_text(), flags=re.MULTILINE)
    return re.sub(r"\]\((?!https?:|/|#)([^)]+)\)", rf"]({folder}/\1)", text)


def longer_training(report: dict[str, Any]) -> str:
    """A caveat when the CP-CNN's heads trained more epochs than the static networks (the base's recipe); else ''."""
    heads = (report["cpcnn"].get("settings") or {}).get("epochs")
    static = ((report.get("settings") or {}).get("recipe") or {}).get("epochs")
    if heads is None or static is None or heads <= static:
        return ""
    return (
        f"The CP-CNN's heads and clustifier trained {heads} epochs on S's outputs, the static networks the base's "
        f"{static}: part of the CP-CNN's gap may come from the longer training, not from routing."
    )


def verdict(report: dict[str, Any]) -> str:
    """Plain words, per method, on whether routing beats a static ResNet of the same recipe at the same MACs (by the
    margin asked), including where ours loses; then the prior art's uniform-threshold exit."""
    compared = report["baselines"].get("per_method") or {}
    words = []
    for method, result in (compared.get("methods") or {}).items():
        point, static, gap = report[method]["chosen"], result["static"], result["gap_points"]
        widths = " and ".join(f"{width:g}" for width in static["from"])
        how = {
            "trained": f"the width {widths}, trained at these MACs",
            "interpolated": f"interpolated in log MACs between the widths {widths}",
            "extrapolated": f"extrapolated in log MACs from the widths {widths}",
        }[static["kind"]]
        words.append(
            f"At {point['macs_per_image'] / 1e6:.2f} M MACs the {LABELS.get(method, method)} reaches "
            f"{pct(point['top1'])}, a static ResNet ({static_recipe(report)}) {pct(static['top1'])} ({how}): "
            f"{abs(gap):.2f} points {'more' if gap >= 0 else 'less'} accurate, "
            + (
                f"so routing beats shrinking the network by the {compared['margin_points']:g} points asked."
                if result["beats"]
                else f"short of the {compared['margin_points']:g} points asked"
                + (": shrinking the network does as well or better." if gap <= 0 else ".")
            )
        )
    longer = longer_training(report)
    if longer:
        words.append(longer)
    plain = (report["baselines"].get("per_method_plain") or {}).get("methods") or {}
    if plain:
        gaps = ", ".join(f"{LABELS.get(m, m)} {r['gap_points']:+.2f}" for m, r in plain.items())
        words.append(f"Against static ResNets trained on labels alone (the base's recipe) the gaps are {gaps} points.")
    uniform = report["baselines"].get("uniform_threshold_exit") or {}
    if "top1" in uniform:
        ms = report["mscnn"]["chosen"]
        words.append(
            f"The MS-CNN's chosen policy reaches {pct(ms['top1'])} at {ms['macs_per_image'] / 1e6:.2f} M MACs; "
            f"the uniform-threshold early exit of prior work reaches {pct(uniform['top1'])} at "
            f"{uniform['macs_per_image'] / 1e6:.2f} M."
        )
    return " ".join(words)


def write_report(out: str | os.PathLike, report: dict[str, Any]) -> dict[str, Any]:
    """Write report.json, report.md and tradeoff.png into `out` (the method reports under out/cpcnn and out/mscnn
    are embedded in report.md); return the report."""
    out = Path(out)
    write_json(out / "report.json", report)
    plot_tradeoff(out / "tradeoff.png", report)
    write_text(out / "report.md", render_markdown(out, report))
    return report
