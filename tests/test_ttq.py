"""The time-to-quality benchmark's pure logic: first crossing, combo overrides."""

import math

import pytest

from benchmarks.ttq import expand, first_crossing, parse_definition, projected_seconds


def test_first_crossing_interpolates_between_the_bracketing_points():
    index, observed, interpolated = first_crossing([10, 20, 30, 40], [4.0, 2.0, 0.5, 0.4])
    assert (index, observed) == (2, 30)
    assert interpolated == pytest.approx(20 + 10 * (2.0 - 1.0) / (2.0 - 0.5))


def test_first_crossing_counts_an_exact_hit_and_a_first_point_below():
    assert first_crossing([1, 2, 3], [3.0, 1.0, 0.9]) == (1, 2, 2)
    assert first_crossing([5, 6], [0.8, 0.7]) == (0, 5, 5)


def test_first_crossing_none_when_never_reached_and_nan_never_reaches():
    assert first_crossing([1, 2], [1.5, 1.01]) is None
    assert first_crossing([1, 2, 3], [math.nan, math.nan, 0.9]) == (2, 3, 3)
    assert first_crossing([], []) is None


def test_first_crossing_against_another_target():
    assert first_crossing([1, 2], [1.0, 0.6], target=0.8)[2] == pytest.approx(1.5)


def test_combo_overrides_fill_in_the_size():
    assert expand("optimizer=lbfgs scales=[{half},{size}]", 256) == [
        "optimizer=lbfgs", "scales=[128,256]"]
    assert expand("", 256) == []
    assert parse_definition("fast=optimizer=lbfgs iterations=80") == (
        "fast", "optimizer=lbfgs iterations=80")


def test_seed_time_is_projected_from_the_slope_of_two_short_runs():
    # 12 s of start-up, 0.4 s a step: 20 steps 20 s, 40 steps 28 s -> 1000 steps 412 s
    assert projected_seconds(20.0, 28.0, 20, 1000) == pytest.approx(412.0)
    assert projected_seconds(20.0, 28.0, 20, 20) == 20.0
