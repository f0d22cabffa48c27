"""`training.schedule.lr_at`: linear warm-up to 1, then cosine down to `min_ratio`."""

from __future__ import annotations

import math

import pytest

from multimodal_doubleloop.training.schedule import lr_at


def test_warmup_is_linear_from_one_step_in():
    # step s of the warm-up gets (s + 1) / warmup_steps: the first step is not at 0
    assert [lr_at(s, 100, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(0, 100, 10, min_ratio=0.5) == pytest.approx(0.1)  # min_ratio plays no part in warm-up


def test_peak_is_one_at_the_end_of_warmup_and_the_start_of_decay():
    assert lr_at(9, 100, 10) == 1.0  # last warm-up step
    assert lr_at(10, 100, 10) == 1.0  # first decay step: cos(0) = 1
    assert lr_at(10, 100, 10, min_ratio=0.3) == pytest.approx(1.0)


def test_cosine_values_in_between():
    # 10 warm-up steps, 20 decay steps: a quarter of the decay is at step 15
    assert lr_at(15, 30, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(20, 30, 10) == pytest.approx(0.5)  # half-way: cos(pi/2) = 0
    assert lr_at(20, 30, 10, min_ratio=0.2) == pytest.approx(0.6)  # 0.2 + 0.8 * 0.5
    assert lr_at(25, 30, 10, min_ratio=0.2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(3 * math.pi / 4)))


@pytest.mark.parametrize("min_ratio", [0.0, 0.01, 0.25, 1.0])
def test_cosine_ends_at_min_ratio_at_total_steps(min_ratio):
    assert lr_at(30, 30, 10, min_ratio) == pytest.approx(min_ratio)
    assert lr_at(30, 30, 0, min_ratio) == pytest.approx(min_ratio)


def test_steps_beyond_total_stay_at_min_ratio():
    for step in (31, 50, 10_000):
        assert lr_at(step, 30, 10, 0.05) == pytest.approx(0.05)
        assert lr_at(step, 30, 10) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("total", "warmup", "min_ratio"), [(50, 5, 0.0), (50, 5, 0.1), (7, 0, 0.3), (100, 99, 0.0)])
def test_monotone_rise_then_monotone_decay(total, warmup, min_ratio):
    values = [lr_at(s, total, warmup, min_ratio) for s in range(total + 5)]
    rise, decay = values[:warmup], values[warmup:]
    assert all(a < b for a, b in zip(rise, rise[1:], strict=False))
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert all(a > b for a, b in zip(decay[: total - warmup + 1], decay[1 : total - warmup + 1], strict=False))
    assert max(values) == pytest.approx(1.0)
    assert min(decay) == pytest.approx(min_ratio)
    assert all(min_ratio - 1e-12 <= v <= 1.0 for v in values)


def test_no_warmup_starts_at_peak():
    assert lr_at(0, 10, 0) == 1.0
    assert lr_at(5, 10, 0) == pytest.approx(0.5)
    assert lr_at(10, 10, 0) == pytest.approx(0.0, abs=1e-12)


def test_total_equal_to_warmup_drops_to_min_right_after():
    # no decay steps: decay_steps is clamped to 1, so no division by zero
    assert [lr_at(s, 4, 4, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 4, 4, 0.1) == pytest.approx(1.0)
    assert lr_at(5, 4, 4, 0.1) == pytest.approx(0.1)
    assert lr_at(100, 4, 4, 0.1) == pytest.approx(0.1)


def test_warmup_longer_than_total_is_still_linear():
    assert lr_at(4, 5, 10) == pytest.approx(0.5)  # the run ends before the peak
    assert lr_at(10, 5, 10, 0.2) == pytest.approx(1.0)  # the step after warm-up is still the peak
    assert lr_at(11, 5, 10, 0.2) == pytest.approx(0.2)  # then the floor
