"""The defences' math, in-process against numbers worked out by hand (fedspeech/math/robust.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedspeech.math.robust import (
    cap_shares,
    change_norm,
    check_aggregation,
    clip_change,
    robust_aggregate,
    selected,
)


def f32(*values):
    return np.array(values, dtype=np.float32)


# ---- share caps --------------------------------------------------------------------------------
def test_cap_moves_the_excess_to_the_others_in_proportion():
    # 0.8 capped at 0.5: the 0.3 excess goes to 0.15 and 0.05 in proportion 3:1
    shares, capped = cap_shares([0.8, 0.15, 0.05], 0.5)
    assert shares.tolist() == pytest.approx([0.5, 0.375, 0.125])
    assert capped == [0]


def test_cap_that_caps_a_second_client_on_the_way():
    # 0.9 -> 0.4; the rest (0.6) over 0.06 : 0.04 would be 0.36 : 0.24, within the cap
    shares, capped = cap_shares([0.9, 0.06, 0.04], 0.4)
    assert shares.tolist() == pytest.approx([0.4, 0.36, 0.24])
    # 0.7/0.25/0.05 at 0.35: the first pass lifts the second to 0.35 + ..., so both are capped
    shares, capped = cap_shares([0.7, 0.25, 0.05], 0.35)
    assert shares.tolist() == pytest.approx([0.35, 0.35, 0.30])
    assert capped == [0, 1]


def test_cap_of_one_over_n_is_equal_weights_and_below_it_is_refused():
    shares, _ = cap_shares([0.998, 0.001, 0.001], 1 / 3)
    assert shares.tolist() == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="cannot hold 3 clients"):
        cap_shares([0.5, 0.3, 0.2], 0.3)


def test_cap_leaves_shares_below_it_alone_and_one_client_keeps_everything():
    shares, capped = cap_shares([0.4, 0.35, 0.25], 0.5)
    assert shares.tolist() == pytest.approx([0.4, 0.35, 0.25]) and capped == []
    assert cap_shares([1.0], 1.0)[0].tolist() == [1.0]


# ---- clipping ----------------------------------------------------------------------------------
def test_change_norm_counts_float_arrays_only():
    ref = [f32(0, 0), np.array(5, np.int64)]
    upd = [f32(3, 4), np.array(500, np.int64)]
    assert change_norm(upd, ref) == 5.0


def test_clip_scales_the_change_to_norm_c_and_keeps_dtypes():
    ref = [f32(1, 1), np.array(7, np.int64)]
    upd = [f32(4, 5), np.array(9, np.int64)]  # change (3, 4): norm 5
    clipped, norm = clip_change(upd, ref, 2.5)
    assert norm == 5.0
    assert clipped[0].tolist() == pytest.approx([1 + 1.5, 1 + 2.0])  # half the change
    assert clipped[0].dtype == np.float32 and clipped[1].tolist() == 9
    assert change_norm(clipped, ref) == pytest.approx(2.5, rel=1e-6)


def test_clip_leaves_a_small_or_zero_change_alone():
    ref = [f32(1, 1)]
    assert clip_change([f32(2, 1)], ref, 5.0)[0][0].tolist() == [2, 1]
    unchanged, norm = clip_change([f32(1, 1)], ref, 0.5)
    assert norm == 0.0 and unchanged[0].tolist() == [1, 1]


# ---- Flower's robust rules -------------------------------------------------------------------
HONEST = [[f32(1, 2), np.array(3, np.int64)], [f32(2, 3), np.array(4, np.int64)],
          [f32(3, 1), np.array(5, np.int64)]]
LIAR = [f32(1000, -1000), np.array(100, np.int64)]


def test_median_is_coordinate_wise_and_ignores_the_claims():
    out = robust_aggregate([*HONEST[:2], LIAR], [0.001, 0.001, 0.998], "median")
    assert out[0].tolist() == [2.0, 2.0] and out[0].dtype == np.float32
    assert out[1].tolist() == 4 and out[1].dtype == np.int64


def test_trimmed_mean_cuts_the_extremes_of_every_coordinate():
    updates = [*HONEST, [f32(4, 4), np.array(6, np.int64)], LIAR]
    out = robust_aggregate(updates, [0.2] * 5, "trimmed_mean", trim_fraction=0.2)
    # each coordinate: drop the lowest and the highest of five, average the middle three:
    # (1, 2, 3, 4, 1000) -> 3 and (-1000, 1, 2, 3, 4) -> 2
    assert out[0].tolist() == pytest.approx([3.0, 2.0])
    assert out[1].tolist() == 5


FOURTH = [f32(2, 2.4), np.array(4, np.int64)]


def test_krum_picks_an_honest_update_and_names_it():
    updates = [*HONEST, FOURTH, LIAR]
    out = robust_aggregate(updates, [0.2] * 5, "krum", num_malicious=1)
    picked = selected(updates, out)
    assert picked and 4 not in picked


def test_multikrum_averages_the_n_minus_f_best_by_their_coefficients():
    updates = [*HONEST, FOURTH, LIAR]
    out = robust_aggregate(updates, [1, 1, 1, 1, 1], "multikrum", num_malicious=1)
    assert out[0].tolist() == pytest.approx([2.0, 2.1])  # the mean of the four honest ones
    assert selected(updates, out) == []


def test_identical_updates_give_that_update_under_every_rule():
    same = [[f32(1.5, -2), np.array(3, np.int64)] for _ in range(7)]
    for method in ("median", "trimmed_mean", "krum", "multikrum", "bulyan"):
        out = robust_aggregate(same, [1 / 7] * 7, method, num_malicious=1)
        assert out[0].tolist() == pytest.approx([1.5, -2.0]) and out[1].tolist() == 3, method


@pytest.mark.parametrize(("method", "n", "f", "trim", "message"), [
    ("krum", 4, 1, 0.2, "needs more than 4 clients a round, got 4"),
    ("multikrum", 3, 1, 0.2, "needs more than 4 clients a round, got 3"),
    ("bulyan", 6, 1, 0.2, "needs at least 7 clients a round, got 6"),
    ("trimmed_mean", 5, 0, 0.5, "--trim_fraction must be within"),
    ("geomedian", 5, 0, 0.2, "unknown aggregation 'geomedian'"),
])
def test_impossible_combinations_are_refused(method, n, f, trim, message):
    with pytest.raises(ValueError, match=message):
        check_aggregation(method, n, f, trim)


def test_one_client_median_is_that_client():
    out = robust_aggregate([HONEST[0]], [1.0], "median")
    assert out[0].tolist() == [1, 2] and not math.isnan(out[0][0])
