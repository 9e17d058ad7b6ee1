"""Pure policy functions (Alg. 1, 2, 4) on cached logits: edge cases, invariants, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynacnn.errors import ConfigError
from dynacnn.mscnn.policies import (
    Policy,
    cap_fc_policy,
    confidence,
    full_policy,
    keep_cumulative,
    keep_top,
    masked_softmax,
    pthp_policy,
    simulate,
    tp_policy,
)

STAGES, CLASSES = 4, 7


def random_logits(seed: int, batch: int = 30, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(STAGES, batch, CLASSES, generator=torch.Generator().manual_seed(seed)) * scale


def random_mask(seed: int, batch: int) -> torch.Tensor:
    mask = torch.rand(batch, CLASSES, generator=torch.Generator().manual_seed(seed)) < 0.6
    mask[:, 0] = True
    return mask


@pytest.mark.parametrize("top_c", [1, 5])
def test_tp_non_positive_thresholds_exit_everything_at_stage_1(top_c: int) -> None:
    decision = simulate(random_logits(0), tp_policy((0.0, -1.0, 0.0), STAGES, CLASSES, top_c))
    assert (decision.exit_stage == 0).all()
    assert (decision.kept[1:] == 0).all()


@pytest.mark.parametrize("top_c", [1, 5])
def test_tp_thresholds_above_one_run_every_stage(top_c: int) -> None:
    logits = random_logits(1, scale=30.0)
    decision = simulate(logits, tp_policy((1.01,) * 3, STAGES, CLASSES, top_c))
    assert (decision.exit_stage == STAGES - 1).all()
    assert (decision.kept == CLASSES).all()
    assert torch.equal(decision.pred, logits[-1].argmax(1))


def test_cap_fc_keeping_every_class_is_no_pruning() -> None:
    logits = random_logits(2)
    pruned = simulate(logits, cap_fc_policy((CLASSES,) * 3, STAGES, CLASSES))
    full = simulate(logits, full_policy(STAGES, CLASSES))
    assert torch.equal(pruned.probs, full.probs) and torch.equal(pruned.kept, full.kept)
    torch.testing.assert_close(full.probs, logits[-1].softmax(1))


def test_cap_fc_prunes_nested_sets() -> None:
    decision = simulate(random_logits(3), cap_fc_policy((5, 6, 2), STAGES, CLASSES))
    assert decision.kept[:, 0].tolist() == [7, 5, 5, 2]
    assert ((decision.probs > 0).sum(1) <= 2).all()


def test_pthp_stops_when_few_labels_remain() -> None:
    logits = random_logits(4, scale=10.0)
    decision = simulate(logits, pthp_policy((1.5,) * 3, (0.5,) * 3, STAGES, CLASSES, top_c=1, stop_size=1))
    top = logits[0].softmax(1).max(1).values
    assert torch.equal(decision.exit_stage == 0, top >= 0.5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: tp_policy((0.5, 0.5), STAGES, CLASSES),
        lambda: cap_fc_policy((3, 3, 3, 3), STAGES, CLASSES),
        lambda: pthp_policy((0.5,) * 3, (0.9,) * 2, STAGES, CLASSES),
        lambda: cap_fc_policy((0, 3, 3), STAGES, CLASSES),
        lambda: cap_fc_policy((3, CLASSES + 1, 3), STAGES, CLASSES),
        lambda: pthp_policy((0.5,) * 3, (0.9, 1.5, 0.9), STAGES, CLASSES),
        lambda: tp_policy((0.5,) * 3, STAGES, CLASSES, top_c=0),
        lambda: Policy("nope", STAGES, CLASSES),
    ],
)
def test_bad_settings_are_config_errors(make) -> None:
    with pytest.raises(ConfigError):
        make()


def test_logits_of_another_shape_are_refused() -> None:
    with pytest.raises(ConfigError, match="stages"):
        simulate(random_logits(0)[:3], full_policy(STAGES, CLASSES))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, CLASSES))
def test_keep_top_keeps_the_most_probable_kept_classes(seed: int, count: int) -> None:
    logits, mask = random_logits(seed)[0], random_mask(seed, 30)
    probs = masked_softmax(logits, mask)
    kept = keep_top(probs, mask, count)
    assert torch.equal(kept.sum(1), mask.sum(1).clamp(max=count))
    assert not (kept & ~mask).any()
    lowest_kept = probs.masked_fill(~kept, 2.0).min(1).values
    highest_dropped = probs.masked_fill(kept | ~mask, -1.0).max(1).values
    assert (lowest_kept >= highest_dropped).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.0, 1.0))
def test_keep_cumulative_is_the_smallest_set_reaching_s_th(seed: int, s_th: float) -> None:
    logits, mask = random_logits(seed)[0], random_mask(seed, 30)
    probs = masked_softmax(logits, mask)
    kept = keep_cumulative(probs, mask, s_th)
    mass = (probs * kept).sum(1)
    size = kept.sum(1)
    assert not (kept & ~mask).any() and (size >= 1).all()
    assert ((mass >= s_th - 1e-6) | (kept == mask).all(1)).all()
    smaller = keep_top(probs, mask, 1)
    for row in range(len(probs)):
        if size[row] > 1:
            without_least = (probs[row] * kept[row]).sum() - probs[row][kept[row]].min()
            assert without_least < s_th + 1e-6
    assert (kept | ~smaller).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, CLASSES))
def test_confidence_is_a_top_c_sum_in_range(seed: int, top_c: int) -> None:
    probs = random_logits(seed)[0].softmax(1)
    conf = confidence(probs, top_c)
    assert ((conf >= top_c / CLASSES - 1e-6) & (conf <= 1.0)).all()
    if top_c > 1:
        assert (conf >= confidence(probs, top_c - 1)).all()


thresholds = st.lists(st.floats(-0.1, 1.1), min_size=3, max_size=3)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), thresholds, st.sampled_from([1, 5]))
def test_tp_invariants_and_monotonicity(seed: int, d_ct: list[float], top_c: int) -> None:
    logits = random_logits(seed)
    decision = simulate(logits, tp_policy(tuple(d_ct), STAGES, CLASSES, top_c))
    ran = decision.kept > 0
    assert torch.equal(ran.sum(0) - 1, decision.exit_stage)
    assert torch.equal(decision.pred, logits[decision.exit_stage, torch.arange(logits.shape[1])].argmax(1))
    stricter = simulate(logits, tp_policy(tuple(v + 0.05 for v in d_ct), STAGES, CLASSES, top_c))
    assert (stricter.exit_stage >= decision.exit_stage).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.lists(st.integers(1, CLASSES), min_size=3, max_size=3))
def test_cap_fc_invariants(seed: int, p_th: list[int]) -> None:
    decision = simulate(random_logits(seed), cap_fc_policy(tuple(p_th), STAGES, CLASSES))
    assert (decision.exit_stage == STAGES - 1).all()
    assert (decision.kept[1:] <= decision.kept[:-1]).all()
    expected = [CLASSES]
    for p in p_th:
        expected.append(min(expected[-1], p))
    assert decision.kept[:, 0].tolist() == expected
    torch.testing.assert_close(decision.probs.sum(1), torch.ones(decision.probs.shape[0]))


def pthp_one_image(logits: torch.Tensor, d_ct: list[float], s_th: list[float], top_c: int, stop: int) -> tuple:
    """Alg. 4 for one image (S, K), written out with Python lists: (exit stage, kept labels per stage run)."""
    labels = list(range(logits.shape[1]))
    kept = []
    for stage in range(logits.shape[0]):
        kept.append(len(labels))
        probs = logits[stage, labels].double().softmax(0).tolist()
        if stage == logits.shape[0] - 1:
            return stage, kept
        confident = min(1.0, sum(sorted(probs, reverse=True)[:top_c])) > d_ct[stage]
        ranked = sorted(range(len(labels)), key=lambda i: -probs[i])
        chosen, total = [], 0.0
        for i in ranked:
            if chosen and total >= s_th[stage]:
                break
            chosen.append(labels[i])
            total += probs[i]
        labels = sorted(chosen)
        if confident or len(labels) <= stop:
            return stage, kept
    raise AssertionError("unreachable")


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**16),
    thresholds,
    st.lists(st.floats(0.0, 0.99), min_size=3, max_size=3),
    st.integers(1, CLASSES - 1),
    st.one_of(st.none(), st.integers(0, CLASSES - 1)),
)
@example(seed=0, d_ct=[1.01] * 3, s_th=[0.9] * 3, top_c=3, stop=None)
def test_pthp_matches_alg4_per_image(seed: int, d_ct: list[float], s_th: list[float], top_c: int, stop) -> None:
    """The batched PTHP equals Alg. 4 run image by image, for every C and stop rule (default: stop at C labels)."""
    logits = random_logits(seed, batch=48)
    policy = pthp_policy(tuple(d_ct), tuple(s_th), STAGES, CLASSES, top_c, stop)
    decision = simulate(logits, policy)
    for image in range(logits.shape[1]):
        stage, kept = pthp_one_image(logits[:, image], d_ct, s_th, top_c, top_c if stop is None else stop)
        assert decision.exit_stage[image].item() == stage
        assert decision.kept[: len(kept), image].tolist() == kept


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**16),
    thresholds,
    st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
    st.integers(1, CLASSES - 1),
    st.integers(0, CLASSES - 1),
)
def test_pthp_invariants(seed: int, d_ct: list[float], s_th: list[float], top_c: int, stop: int) -> None:
    decision = simulate(random_logits(seed), pthp_policy(tuple(d_ct), tuple(s_th), STAGES, CLASSES, top_c, stop))
    kept = decision.kept
    ran = kept > 0
    assert torch.equal(ran.sum(0) - 1, decision.exit_stage)
    assert (kept[1:][ran[1:]] > stop).all()
    assert (kept[1:] <= kept[:-1]).all()
    assert ((decision.probs > 0).sum(1) <= kept[decision.exit_stage, torch.arange(kept.shape[1])]).all()
