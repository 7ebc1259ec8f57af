"""Tests for aggregate: weighting coefficients, the float64 weighted average and its accumulator
(WeightedSum), update screening, l2_distance and weighted_metrics.

Expected numbers are literals worked out by hand (formula in the comment next to each), never the
output of the function under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedspeech.math import aggregate
from fedspeech.math.aggregate import (
    WeightedSum,
    aggregation_coefficients,
    l2_distance,
    update_problem,
    weighted_average,
    weighted_metrics,
)

# softmax of (0, -1): [1, e^-1] / (1 + e^-1), e^-1 = 0.36787944117144233
SOFTMAX_0_M1 = [0.7310585786300049, 0.2689414213699951]
# softmax of (0, -10): [1, e^-10] / (1 + e^-10), e^-10 = 4.5399929762484854e-05
SOFTMAX_0_M10 = [0.9999546021312976, 4.5397868702434395e-05]


# ---- weighted_metrics and l2_distance ----------------------------------------------------------
def test_weighted_metrics_weights_by_examples_and_skips_non_numbers():
    results = [
        (10, {"wer": 20.0, "cid": "a", "x": math.nan}),
        (30, {"wer": 40.0, "flag": True, "x": 2.0}),
    ]
    # wer = (10 * 20 + 30 * 40) / 40 = 35; x only from the finite value; strings and bools dropped
    assert weighted_metrics(results) == {"wer": 35.0, "x": 2.0}
    assert weighted_metrics([]) == {}


def test_l2_distance_over_float_arrays_only():
    a = [np.array([0.0, 0.0], dtype=np.float32), np.array(5, dtype=np.int64)]
    b = [np.array([3.0, 4.0], dtype=np.float32), np.array(9, dtype=np.int64)]
    assert l2_distance(a, b) == 5.0  # sqrt(3^2 + 4^2); the int64 counter is not a weight
    assert l2_distance(a, a) == 0.0


# ---- aggregation_coefficients --------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, strategy, expected",
    [
        ([10, 30], "num", [0.25, 0.75]),  # 10/40, 30/40
        ([1, 1, 2], "num", [0.25, 0.25, 0.5]),  # 1/4, 1/4, 2/4
        ([5, 0], "num", [1.0, 0.0]),  # a client with 0 samples gets weight 0
        ([1.0, 2.0], "loss", SOFTMAX_0_M1),  # softmax(-1, -2) = softmax(0, -1)
        ([1000.0, 1001.0], "loss", SOFTMAX_0_M1),  # shift-invariant; exp(-1000) underflows
        ([10.0, 20.0], "wer", SOFTMAX_0_M10),  # softmax(-10, -20) = softmax(0, -10)
        # softmax(-10, -20, -min(150, 100)) = [1, e^-10, e^-90] / (1 + e^-10 + e^-90)
        ([10.0, 20.0, 150.0], "wer", [0.9999546021312976, 4.5397868702434395e-05,
                                      8.193640633281264e-40]),
        ([0.0, 0.0, 0.0], "wer", [1 / 3, 1 / 3, 1 / 3]),
        # [1, e^-100] / (1 + e^-100), e^-100 = 3.720075976020836e-44
        ([0.0, 100.0], "wer", [1.0, 3.720075976020836e-44]),
        ([100.0, 250.0], "wer", [0.5, 0.5]),  # both clipped to 100
    ],
)
def test_coefficients_hand_computed(values, strategy, expected):
    c = aggregation_coefficients(values, strategy)
    assert isinstance(c, np.ndarray) and c.dtype == np.float64
    assert c.shape == (len(values),)
    np.testing.assert_allclose(c, expected, rtol=1e-12, atol=0)
    assert abs(c.sum() - 1.0) <= 1e-12
    assert np.all(np.isfinite(c))


@pytest.mark.parametrize("losses", [[0.5, 1.0, 3.0], [2.3, 2.1], [0.0, 10.0, 20.0, 7.5]])
def test_loss_coefficients_equal_reference_formula(losses):
    # the reference: w_k = exp(-L_k), normalised
    raw = [math.exp(-v) for v in losses]
    expected = [w / sum(raw) for w in raw]
    np.testing.assert_allclose(aggregation_coefficients(losses, "loss"), expected, rtol=1e-12)


@pytest.mark.parametrize("wers", [[10.0, 20.0, 35.5], [0.0, 100.0], [80.0, 99.0, 100.0, 42.0]])
def test_wer_coefficients_equal_reference_formula(wers):
    # the reference: w_k = exp(100 - WER_k), normalised (finite in float64 for WER in [0, 100])
    raw = [math.exp(100.0 - v) for v in wers]
    expected = [w / sum(raw) for w in raw]
    np.testing.assert_allclose(aggregation_coefficients(wers, "wer"), expected, rtol=1e-12)


@pytest.mark.parametrize("strategy, value", [("num", 7), ("loss", 1234.5), ("wer", 0.0),
                                             ("wer", 500.0), ("loss", -3.0)])
def test_single_client_gets_exactly_one(strategy, value):
    c = aggregation_coefficients([value], strategy)
    assert c.tolist() == [1.0]


@pytest.mark.parametrize("strategy, value", [("num", 12), ("loss", 700.0), ("wer", 37.0)])
def test_identical_clients_get_equal_coefficients(strategy, value):
    c = aggregation_coefficients([value] * 4, strategy)
    assert c.tolist() == [0.25, 0.25, 0.25, 0.25]


def test_coefficients_sum_to_one_for_extremes():
    cases = [([0.0, 1e6], "loss"), ([1e-300, 1e300], "loss"), ([0.0] * 50, "wer"),
             ([1, 10**12], "num"), (list(range(1, 200)), "wer")]
    for values, strategy in cases:
        c = aggregation_coefficients(values, strategy)
        assert c.dtype == np.float64
        assert np.all(np.isfinite(c)) and np.all(c >= 0)
        assert abs(c.sum() - 1.0) <= 1e-12, (values, strategy)


@pytest.mark.parametrize(
    "values, strategy",
    [
        ([1.0, 2.0], "median"),
        ([1.0, 2.0], ""),
        ([1.0, float("nan")], "loss"),
        ([1.0, float("inf")], "loss"),
        ([float("nan")], "wer"),
        ([10.0, float("-inf")], "wer"),
        ([10, float("nan")], "num"),
        ([0, 0], "num"),
        ([5, -5], "num"),
        ([], "num"),
        ([], "wer"),
    ],
)
def test_coefficients_reject_bad_input(values, strategy):
    with pytest.raises(ValueError):
        aggregation_coefficients(values, strategy)


# ---- weighted_average ----------------------------------------------------------------------------
def f32(*values):
    return np.array(values, dtype=np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


def test_weighted_average_hand_computed():
    a = [f32([1, 2], [3, 4]), np.array([1.0, -1.0])]
    b = [f32([5, 6], [7, 8]), np.array([3.0, 1.0])]
    out = weighted_average([a, b], [0.25, 0.75])
    # 0.25*1 + 0.75*5 = 4, 0.5 + 4.5 = 5, 0.75 + 5.25 = 6, 1 + 6 = 7
    assert out[0].dtype == np.float32 and out[0].shape == (2, 2)
    assert np.array_equal(out[0], f32([4, 5], [6, 7]))
    # float64 stays float64: 0.25*1 + 0.75*3 = 2.5, -0.25 + 0.75 = 0.5
    assert out[1].dtype == np.float64
    assert np.array_equal(out[1], np.array([2.5, 0.5]))
    # inputs untouched
    assert np.array_equal(a[0], f32([1, 2], [3, 4])) and np.array_equal(b[1], [3.0, 1.0])


@pytest.mark.parametrize(
    "x, y, coefficients, expected",
    [
        (3, 6, [2 / 3, 1 / 3], 4),  # 2 + 2 = 4 (a float sum just under 4 must not truncate to 3)
        (3, 4, [0.5, 0.5], 4),  # 3.5 -> 4
        (10, 1, [0.3, 0.7], 4),  # 3 + 0.7 = 3.7 -> 4 (truncation would give 3)
        (10, 21, [0.25, 0.75], 18),  # 2.5 + 15.75 = 18.25 -> 18
        (100, 0, [0.999, 0.001], 100),  # 99.9 -> 100
    ],
)
def test_weighted_average_rounds_integer_layers(x, y, coefficients, expected):
    out = weighted_average([[i64(x)], [i64(y)]], coefficients)
    assert out[0].dtype == np.int64
    assert out[0].tolist() == [expected]


def test_weighted_average_accumulates_in_float64():
    # 0.25*1e8 + 0.5*1 + 0.25*(-1e8) = 0.5; in float32, 2.5e7 + 0.5 rounds to 2.5e7 and gives 0
    layers = [[f32(1e8)], [f32(1.0)], [f32(-1e8)]]
    out = weighted_average(layers, [0.25, 0.5, 0.25])
    assert out[0].dtype == np.float32
    assert out[0].tolist() == [0.5]


def test_weighted_average_single_update_is_identity():
    w = [f32(0.1, 0.2, 0.3), i64(7)]
    out = weighted_average([w], [1.0])
    assert np.array_equal(out[0], w[0]) and out[0].dtype == np.float32
    assert out[1].tolist() == [7]


def test_weighted_average_errors():
    with pytest.raises(ValueError):
        weighted_average([], [])
    with pytest.raises(ValueError):
        weighted_average([[f32(1)], [f32(2)]], [1.0])


# ---- update_problem ------------------------------------------------------------------------------
REF = [np.zeros((2, 3), np.float32), np.zeros(2, np.float32), np.array(0, np.int64)]


def test_update_problem_none_for_good_update():
    good = [np.ones((2, 3), np.float32), f32(1, 2), np.array(5, np.int64)]
    assert update_problem(good, REF) is None
    assert update_problem(good, None) is None


@pytest.mark.parametrize(
    "update, fragment",
    [
        ([np.zeros((2, 3), np.float32), f32(1, 2)], "2 arrays instead of 3"),
        ([np.zeros((3, 2), np.float32), f32(1, 2), np.array(0)], "array 0 has shape"),
        ([np.zeros((2, 3), np.float32), f32(1, 2, 3), np.array(0)], "array 1 has shape"),
        ([np.zeros((2, 3), np.float64), f32(1, 2), np.array(0)], "array 0 has dtype float64"),
        ([np.zeros((2, 3), np.float32), f32(1, 2), np.array(0.0, np.float32)],
         "array 2 has dtype float32"),
        ([np.zeros((2, 3), np.float32), f32(1, np.nan), np.array(0)], "array 1 contains NaN"),
        ([np.zeros((2, 3), np.float32), f32(np.inf, 1), np.array(0)], "1 contains NaN or Inf"),
        ([np.full((2, 3), -np.inf, np.float32), f32(1, 2), np.array(0)], "array 0 contains"),
    ],
)
def test_update_problem_messages(update, fragment):
    problem = update_problem(update, REF)
    assert problem is not None and fragment in problem


def test_update_problem_nan_without_reference():
    assert "NaN" in update_problem([f32(np.nan)], None)


# ---- WeightedSum ---------------------------------------------------------------------------------
def test_weighted_sum_hand_computed():
    # arrange
    a = [f32([1, 2], [3, 4]), i64(10)]
    b = [f32([5, 6], [7, 8]), i64(21)]
    total = WeightedSum()
    # act
    total.add(a, 0.25)
    total.add(b, 0.75)
    out = total.result()
    # assert: 0.25*1 + 0.75*5 = 4, ...; 2.5 + 15.75 = 18.25 -> 18
    assert total.total == 1.0
    assert out[0].dtype == np.float32 and np.array_equal(out[0], f32([4, 5], [6, 7]))
    assert out[1].dtype == np.int64 and out[1].tolist() == [18]
    assert np.array_equal(a[0], f32([1, 2], [3, 4]))  # inputs untouched


def test_weighted_sum_renormalises_when_an_update_is_skipped():
    # arrange: coefficients worked out for three updates, the middle one never added
    coefficients = [0.25, 0.5, 0.25]
    updates = [[f32(2, 10)], [f32(100, 100)], [f32(6, 30)]]
    total = WeightedSum()
    # act
    for k in (0, 2):
        total.add(updates[k], coefficients[k])
    out = total.result()
    # assert: (0.25*2 + 0.25*6) / 0.5 = 4, (0.25*10 + 0.25*30) / 0.5 = 20
    assert total.total == 0.5
    assert out[0].tolist() == [4.0, 20.0]


def test_weighted_sum_of_layers_larger_than_a_slice(monkeypatch):
    # arrange: 3-element slices over 10- and 12-element layers, one of them not contiguous
    monkeypatch.setattr(aggregate, "_CHUNK", 3)
    x = np.arange(10, dtype=np.float32)  # 0..9
    y = np.arange(12, dtype=np.float64).reshape(3, 4).T  # shape (4, 3), a transposed view
    total = WeightedSum()
    # act
    total.add([x, y], 0.5)
    total.add([x * 3, y + 4], 0.5)
    out = total.result()
    # assert: (x + 3x) / 2 = 2x; (y + y + 4) / 2 = y + 2
    assert out[0].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0]
    assert out[1].shape == (4, 3)
    assert out[1].tolist() == [[2.0, 6.0, 10.0], [3.0, 7.0, 11.0], [4.0, 8.0, 12.0],
                               [5.0, 9.0, 13.0]]


@pytest.mark.parametrize(
    "second",
    [[f32(1, 2, 3), i64(1)], [f32(1, 2)], [f32(1, 2), i64(1), f32(3)], [f32(1, 2), i64(1, 2)]],
)
def test_weighted_sum_refuses_other_shapes_and_keeps_its_sum(second):
    # arrange
    total = WeightedSum()
    total.add([f32(2, 4), i64(6)], 1.0)
    # act / assert: refused before anything of it is added
    with pytest.raises(ValueError):
        total.add(second, 1.0)
    assert total.total == 1.0
    out = total.result()
    assert out[0].tolist() == [2.0, 4.0] and out[1].tolist() == [6]


def test_weighted_sum_result_needs_a_positive_total():
    with pytest.raises(ValueError):
        WeightedSum().result()
    zero = WeightedSum()
    zero.add([f32(1)], 0.0)
    with pytest.raises(ValueError):
        zero.result()


def test_weighted_sum_result_releases_the_accumulator():
    total = WeightedSum()
    total.add([f32(1)], 1.0)
    assert total.result()[0].tolist() == [1.0]
    with pytest.raises(ValueError):  # the float64 sum is gone: a second result is an error
        total.result()
