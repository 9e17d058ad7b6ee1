import torch
from torch import nn

from dynacnn.timing import Contender, measure


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
