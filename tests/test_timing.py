import statistics

import pytest
import torch
from torch import nn

from dynacnn.timing import Contender, measure, paired_speedup


def test_interleaved_measurement_ranks_a_model_doing_less_work_as_faster():
    torch.manual_seed(0)
    small, large = nn.Linear(256, 256), nn.Sequential(*[nn.Linear(256, 256) for _ in range(8)])
    images = torch.randn(512, 256)
    rows = measure(
        [Contender("base", large, 8 * 256 * 256), Contender("cheap", small, 256 * 256)],
        images,
        batch_sizes=(1, 64),
        repeats=3,
        max_images_batch1=64,
        chunk_batches=2,
    )
    assert [(r["model"], r["batch_size"]) for r in rows] == [("base", 1), ("cheap", 1), ("base", 64), ("cheap", 64)]
    base_rows = [r for r in rows if r["model"] == "base"]
    assert all(r["wall_speedup_median"] == 1.0 and r["mac_speedup"] == 1.0 for r in base_rows)
    cheap_64 = rows[3]
    assert cheap_64["mac_speedup"] == 8.0
    assert cheap_64["wall_speedup_median"] > 1.5
    assert cheap_64["routing_efficiency"] == cheap_64["wall_speedup_median"] / 8.0
    assert rows[0]["images"] == 64 and rows[2]["images"] == 512
    assert rows[0]["paired_timings"] == 3 * 32 and rows[2]["paired_timings"] == 3 * 4  # repeats x chunks of 2 batches
    assert rows[3]["wall_speedup_min"] <= rows[3]["wall_speedup_median"]


def test_every_contender_first_meets_every_image_untimed_then_runs_each_repeat():
    seen: dict[str, list[int]] = {"base": [], "other": []}

    def recorder(name):
        return lambda batch: seen[name].append(len(batch))

    images = torch.randn(100, 4)
    measure(
        [Contender("base", recorder("base"), 2.0), Contender("other", recorder("other"), 1.0)],
        images,
        batch_sizes=(16,),
        repeats=2,
        chunk_batches=3,
    )
    for sizes in seen.values():
        assert sum(sizes) == 3 * len(images)  # one warm-up pass, then two timed repeats
        assert sizes[:7] == [16] * 6 + [4]  # the warm-up walks every batch, the ragged last one included


def test_references_pair_a_contender_with_its_own_base_and_rows_can_be_paired_again():
    torch.manual_seed(0)
    small, large = nn.Linear(128, 128), nn.Sequential(*[nn.Linear(128, 128) for _ in range(6)])
    contenders = [
        Contender("base", large, 6.0),
        Contender("cheap", small, 1.0),
        Contender("base-b", large, 6.0),
        Contender("cheap-b", small, 1.0),
    ]
    rows = measure(
        contenders,
        torch.randn(256, 128),
        batch_sizes=(32,),
        repeats=2,
        chunk_batches=2,
        references={"base-b": "base-b", "cheap-b": "base-b"},
    )
    by = {r["model"]: r for r in rows}
    assert [by[n]["reference"] for n in ("base", "cheap", "base-b", "cheap-b")] == ["base", "base", "base-b", "base-b"]
    assert by["base-b"]["wall_speedup_median"] == 1.0
    for name in ("cheap", "cheap-b"):
        again = paired_speedup(by[name], by[by[name]["reference"]])
        assert again["median"] == by[name]["wall_speedup_median"] and again["min"] == by[name]["wall_speedup_min"]
        assert again["mac_speedup"] == 6.0
    across = paired_speedup(by["cheap-b"], by["base"])  # any two rows of one call pair up
    manual = sorted(
        b / c for bp, cp in zip(by["base"]["chunk_seconds"], by["cheap-b"]["chunk_seconds"]) for b, c in zip(bp, cp)
    )
    assert len(manual) == 2 * 4 and across["median"] == pytest.approx(statistics.median(manual))
    assert across["routing_efficiency"] == pytest.approx(across["median"] / 6.0)


def test_references_must_name_timed_contenders():
    with pytest.raises(ValueError, match="not timed"):
        measure([Contender("base", nn.Identity(), 1.0)], torch.randn(4, 2), (2,), 1, references={"base": "ghost"})
