"""The shared rendering helpers: markdown tables, percentages, timing tables, atomic PNGs; bench.json / bench.md."""

from __future__ import annotations

import json

from matplotlib.figure import Figure
from PIL import Image

from dynacnn.report.demo_report import write_bench
from dynacnn.report.render import median_speedups, pct, save_figure, table, timing_table

ROWS = [
    {
        "model": name,
        "batch_size": batch,
        "images_per_s": speed,
        "macs_per_image": macs,
        "mac_speedup": 2e6 / macs,
        "wall_speedup_min": wall * 0.9,
        "wall_speedup_median": wall,
        "routing_efficiency": wall * macs / 2e6,
    }
    for name, macs, batch, speed, wall in (
        ("base", 2e6, 32, 100.0, 1.0),
        ("cheap", 1e6, 32, 150.0, 1.5),
        ("base", 2e6, 256, 120.0, 1.0),
        ("cheap", 1e6, 256, 200.0, 1.7),
    )
]


def test_table_aligns_the_first_column_left_and_the_rest_right_unless_told():
    assert table(["a", "b"], [[1, "x"]]) == "| a | b |\n| --- | ---: |\n| 1 | x |\n"
    assert table(["a", "b"], [], ["---", "---"]).splitlines()[1] == "| --- | --- |"
    assert pct(0.92481) == "92.48%"


def test_timing_table_and_medians_of_measure_rows():
    text = timing_table(ROWS)
    assert "routing efficiency" in text.splitlines()[0] and len(text.splitlines()) == 2 + len(ROWS)
    assert "| cheap | base | 256 | 200 | 1.00 M | 2.00x | 1.53x / 1.70x | 0.85 |" in text
    assert median_speedups(ROWS) == {"base": 1.0, "cheap": 1.7}
    assert median_speedups(ROWS, 32) == {"base": 1.0, "cheap": 1.5}


def test_save_figure_writes_a_png_into_a_new_folder(tmp_path):
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "sub" / "line.png", dpi=50)
    with Image.open(path) as image:
        image.verify()
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["line.png"]


def test_write_bench_writes_the_json_and_its_table(tmp_path):
    bench = {"contenders": {}, "rows": ROWS, "images_per_s": {"base": 120.0, "cheap": 200.0}, "note": "n"}
    assert write_bench(tmp_path, bench) is bench
    assert json.loads((tmp_path / "bench.json").read_text()) == bench
    assert (tmp_path / "bench.md").read_text() == timing_table(ROWS)
