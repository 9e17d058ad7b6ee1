"""The demo's benchmark step and its report: report.json, report.md and the combined trade-off chart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from dynacnn.timing import Contender, format_rows, measure, median_speedups  # noqa: E402
from dynacnn.errors import ConfigError  # noqa: E402
from dynacnn.flops import count_macs  # noqa: E402
from dynacnn.io import atomic_write, read_json, write_json, write_text  # noqa: E402
from dynacnn.models.fold import fold_batchnorm  # noqa: E402
from dynacnn.runs import load_run  # noqa: E402

BATCH_SIZES = (1, 32, 256)
CHUNK_BATCHES = 10


def demo_contenders(out: Path, input_shape: tuple[int, ...], device: torch.device) -> list[Contender]:
    """Base, CP-CNN at its chosen tau, MS-CNN with its chosen policy and the compute-matched ResNet, each with
    its BatchNorms folded into the convs (the form a deployment runs)."""
    from dynacnn.cpcnn.pipeline import load_cpcnn
    from dynacnn.mscnn.pipeline import load_mscnn

    probe = torch.zeros(1, *input_shape)
    contenders = []
    for name, run_dir in (("base", out / "base"), ("matched", out / "matched")):
        model = load_run(run_dir, "cpu").model
        macs = count_macs(model, probe).macs_per_image
        model = model.to(device)
        if device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)
        contenders.append(Contender(name, fold_batchnorm(model), macs))
    cpcnn = fold_batchnorm(load_cpcnn(out / "cpcnn", device))
    contenders.insert(1, Contender("cpcnn", cpcnn, read_json(out / "cpcnn" / "cpcnn.json")["chosen"]["macs_per_image"]))
    chosen = load_mscnn(out / "mscnn")["chosen"]
    contenders.insert(2, Contender("mscnn", mscnn_runner(out / "mscnn", chosen, device), chosen["macs_per_image"]))
    return contenders


def mscnn_runner(out: Path, chosen: dict[str, Any], device: torch.device) -> Callable[[torch.Tensor], Any]:
    """The MS-CNN's chosen policy as an executing function (real early exit / FC-row pruning)."""
    from dynacnn.mscnn import Policy, execute, load_model

    if chosen["policy"] == "CAP_CONV":
        raise ConfigError(f"{out}: the chosen MS-CNN policy is CAP_CONV, which the demo benchmark cannot rebuild; "
                          "its speed is in mscnn.json")
    model = fold_batchnorm(load_model(out, device))
    settings = chosen["settings"]
    kind = "PTHP" if "s_th" in settings else "TP" if "d_ct" in settings else "CAP_FC" if "p_th" in settings else "full"
    policy = Policy(kind, model.num_stages, model.config.num_classes,
                    d_ct=tuple(settings["d_ct"]) if "d_ct" in settings else None, top_c=settings.get("top_c", 5),
                    p_th=tuple(settings["p_th"]) if "p_th" in settings else None,
                    s_th=tuple(settings["s_th"]) if "s_th" in settings else None, stop_size=settings.get("stop_size", 0))
    return lambda x: execute(model, x, policy, chosen.get("fc_rows", "image"))


def contender_identity(out: Path) -> dict[str, Any]:
    """What the benchmark timed: each contender's run settings and chosen operating point (a rerun of the demo
    re-measures when any of them changed)."""
    runs = {name: read_json(out / name / "run.json") for name in ("base", "matched")}
    cpcnn, mscnn = read_json(out / "cpcnn" / "cpcnn.json")["chosen"], read_json(out / "mscnn" / "mscnn.json")["chosen"]
    return {
        **{name: {"model": run["model"], "train_config": run.get("train_config")} for name, run in runs.items()},
        "cpcnn": {"tau": cpcnn["tau"], "macs_per_image": cpcnn["macs_per_image"]},
        "mscnn": {"policy": mscnn["policy"], "settings": mscnn["settings"]},
    }


def benchmark(out: Path, splits: Any, device: torch.device, console: Console, repeats: int = 5) -> dict[str, Any]:
    """Images/s of every contender at batch 1, 32 and 256 on the test split, paired chunks; writes bench.json/.md."""
    from dynacnn.data import normalize

    contenders = demo_contenders(out, splits.info.input_shape, device)
    images = normalize(splits.test.images, splits.info).to(device)
    if device.type == "cpu":
        images = images.contiguous(memory_format=torch.channels_last)
    rows = measure(contenders, images, BATCH_SIZES, repeats=repeats, max_images_batch1=500 if repeats > 2 else 100,
                   chunk_batches=CHUNK_BATCHES)
    console.print(format_rows(rows))
    result = {
        "contenders": contender_identity(out),
        "rows": rows,
        "images_per_s": {row["model"]: row["images_per_s"] for row in rows if row["batch_size"] == 256},
        "note": f"interleaved repetitions in one process, each over chunks of {CHUNK_BATCHES} batches run by every model in "
                "turn; BatchNorm folded into the convs of every model; speed-ups are per-chunk base time / model time "
                "on the same images (min and median); "
                f"batch 1 is timed on the first {500 if repeats > 2 else 100} test images; device {device}",
    }
    write_json(out / "bench.json", result)
    write_text(out / "bench.md", format_rows(rows))
    return result


def plot_tradeoff(report: dict[str, Any], path: Path) -> None:
    """One accuracy-against-MACs chart: every method, operating point, baseline and oracle bound."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    base, cp, ms = report["base"], report["cpcnn"], report["mscnn"]
    sweep = sorted(cp["sweep"], key=lambda r: r["macs_per_image"])
    ax.plot([r["macs_per_image"] / 1e6 for r in sweep], [100 * r["top1"] for r in sweep], "o-", color="tab:blue",
            label="CP-CNN, tau sweep (calibration)")
    policies = ms["policies"]
    ax.scatter([r["macs_per_image"] / 1e6 for r in policies], [100 * r["top1"] for r in policies], s=8, color="tab:orange",
               alpha=0.4, label="MS-CNN policies (calibration)")
    points = [
        ("base ResNet", base, "k", "s"),
        ("CP-CNN chosen (test)", cp["chosen"], "tab:blue", "*"),
        ("CP-CNN oracle routing", cp["oracle"], "tab:blue", "^"),
        ("MS-CNN full network", ms["full"], "tab:orange", "s"),
        ("MS-CNN chosen (test)", ms["chosen"], "tab:orange", "*"),
        ("MS-CNN oracle exit", ms["oracle"], "tab:orange", "^"),
        ("compute-matched ResNet", report["baselines"]["compute_matched"], "tab:green", "D"),
    ]
    uniform = report["baselines"].get("uniform_threshold_exit") or {}
    if "top1" in uniform:
        points.append(("uniform-threshold exit (prior art)", uniform, "tab:red", "v"))
    for label, point, color, marker in points:
        ax.scatter(point["macs_per_image"] / 1e6, 100 * point["top1"], color=color, marker=marker, s=110, edgecolor="k",
                   zorder=5, label=label)
    ax.set_xlabel("MACs per image (millions, counted)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{report['dataset']['name']}: accuracy against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    plt.close(fig)


def _row(name: str, point: dict[str, Any], base: dict[str, Any], speed: float | None = None, speedup: float | None = None) -> str:
    speed_text = f"{speed:.0f} | {speedup:.2f}x" if speed and speedup else "- | -"
    return (f"| {name} | {100 * point['top1']:.2f}% | {point['macs_per_image'] / 1e6:.2f} M | "
            f"{base['macs_per_image'] / point['macs_per_image']:.2f}x | {speed_text} |")


def render_markdown(report: dict[str, Any], out: Path) -> str:
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
        "| model | top-1 | MACs/image | MAC speed-up | images/s | wall-clock speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        _row("base ResNet", base, base, speed["base"], speedup["base"]),
        _row(f"CP-CNN, tau = {cp['chosen']['tau']}", cp["chosen"], base, speed["cpcnn"], speedup["cpcnn"]),
        _row(f"MS-CNN, {ms['chosen']['policy']}", ms["chosen"], base, speed["mscnn"], speedup["mscnn"]),
        _row(f"compute-matched ResNet (width {matched['width']})", matched, base, speed["matched"], speedup["matched"]),
    ]
    uniform = report["baselines"].get("uniform_threshold_exit") or {}
    if "top1" in uniform:
        lines.append(_row("MS-CNN, uniform-threshold exit (prior art)", uniform, base))
    lines += ["", verdict(report), "", "![accuracy against MACs](tradeoff.png)", "",
              "## Side-by-side benchmark", "", format_rows(report["bench"]) if report.get("bench") else "", ""]
    for folder in ("cpcnn", "mscnn"):
        lines += [embedded_markdown(out / folder / f"{folder}.md", folder), ""]
        linked = set(re.findall(r"\]\(([^)]+)\)", lines[-2]))
        lines += [f"![{png.stem.replace('_', ' ')}]({folder}/{png.name})" for png in sorted((out / folder).glob("*.png"))
                  if f"{folder}/{png.name}" not in linked]
        lines.append("")
    return "\n".join(lines) + "\n"


def embedded_markdown(path: Path, folder: str) -> str:
    """A method's own markdown report, headings demoted one level and relative links re-rooted at `folder`."""
    if not path.exists():
        return f"({path.name} was not written)"
    text = re.sub(r"^(#+) ", r"#\1 ", path.read_text(), flags=re.MULTILINE)
    return re.sub(r"\]\((?!https?:|/|#)([^)]+)\)", rf"]({folder}/\1)", text)


def verdict(report: dict[str, Any]) -> str:
    """Plain words on which method wins at equal MACs, including where ours loses."""
    cp, matched, ms = report["cpcnn"]["chosen"], report["baselines"]["compute_matched"], report["mscnn"]["chosen"]
    gap = 100 * (cp["top1"] - matched["top1"])
    words = (f"At about equal MACs ({cp['macs_per_image'] / 1e6:.2f} M against {matched['macs_per_image'] / 1e6:.2f} M), "
             f"the CP-CNN is {abs(gap):.2f} points {'more' if gap >= 0 else 'less'} accurate than a plain ResNet trained with "
             f"the same recipe: {'routing wins' if gap > 0 else 'routing loses here'}. ")
    uniform = report["baselines"].get("uniform_threshold_exit") or {}
    if "top1" in uniform:
        words += (f"The MS-CNN's chosen policy reaches {100 * ms['top1']:.2f}% at {ms['macs_per_image'] / 1e6:.2f} M MACs; "
                  f"the uniform-threshold early exit of prior work reaches {100 * uniform['top1']:.2f}% at "
                  f"{uniform['macs_per_image'] / 1e6:.2f} M.")
    return words


def write_report(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write report.json, report.md and tradeoff.png into `out`; return the report."""
    write_json(out / "report.json", report)
    plot_tradeoff(report, out / "tradeoff.png")
    write_text(out / "report.md", render_markdown(report, out))
    return report
