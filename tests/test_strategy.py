"""Tests for aggregate (the weighting math) and TrainAfterAggregateStrategy with constructed FitRes.

Expected numbers are literals worked out by hand (formula in the comment next to each), never the
output of the function under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from aggregate import (
    aggregation_coefficients,
    l2_distance,
    update_problem,
    weighted_average,
    weighted_metrics,
)
from strategy import TrainAfterAggregateStrategy

# ---- strategy with constructed results -----------------------------------------------------------
class Proxy(ClientProxy):
    """Flower's node; only ``cid`` is used by the strategy."""

    def get_properties(self, ins, timeout, group_id):
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


GLOBAL = [f32(0, 0), np.array(0, np.int64)]
# client a: 10 examples, train_loss 1, valid_wer 10; client b: 30 examples, loss 2, WER 20
A = [f32(1, 2), np.array(10, np.int64)]
B = [f32(5, 6), np.array(21, np.int64)]


def fit_res(arrays, n, code=Code.OK, **metrics) -> FitRes:
    return FitRes(status=Status(code, ""), parameters=ndarrays_to_parameters(arrays),
                  num_examples=n, metrics=metrics)


def two_clients(a_arrays=None, b_arrays=None, a_metrics=None, b_metrics=None):
    am = {"cid": "a", "train_loss": 1.0, "valid_wer": 10.0, **(a_metrics or {})}
    bm = {"cid": "b", "train_loss": 2.0, "valid_wer": 20.0, **(b_metrics or {})}
    return [
        (Proxy("node-1"), fit_res(A if a_arrays is None else a_arrays, 10, **am)),
        (Proxy("node-2"), fit_res(B if b_arrays is None else b_arrays, 30, **bm)),
    ]


def make_strategy(**kwargs) -> TrainAfterAggregateStrategy:
    kwargs.setdefault("initial_parameters", ndarrays_to_parameters(GLOBAL))
    return TrainAfterAggregateStrategy(**kwargs)


def arrays_of(params):
    assert params is not None
    return parameters_to_ndarrays(params)


@pytest.mark.parametrize(
    "weighting, coefficients, expected_float, expected_int",
    [
        # c = [10, 30] / 40 = [0.25, 0.75]; [0.25 + 3.75, 0.5 + 4.5]; 2.5 + 15.75 = 18.25 -> 18
        ("num", [0.25, 0.75], [4.0, 5.0], 18),
        # c = softmax(-1, -2) = [0.7310585786300049, 0.2689414213699951]
        # [1 c0 + 5 c1, 2 c0 + 6 c1] = [2.0757656854799804, 3.0757656854799804]
        # 10 c0 + 21 c1 = 12.958355635069946 -> 13
        ("loss", SOFTMAX_0_M1, [2.0757656854799804, 3.0757656854799804], 13),
        # c = softmax(-10, -20) = [0.9999546021312976, 4.5397868702434395e-05]
        # [1 + 4 c1, 2 + 4 c1] = [1.000181591474810, 2.000181591474810]; 10 + 11 c1 -> 10
        ("wer", SOFTMAX_0_M10, [1.0001815914748098, 2.00018159147481], 10),
    ],
)
def test_aggregate_fit_weightings(weighting, coefficients, expected_float, expected_int):
    strategy = make_strategy(weight_strategy=weighting)
    params, metrics = strategy.aggregate_fit(1, two_clients(), [])
    out = arrays_of(params)
    assert len(out) == 2
    assert out[0].dtype == np.float32 and out[1].dtype == np.int64
    np.testing.assert_allclose(out[0], expected_float, rtol=1e-6)
    assert out[1].tolist() == expected_int
    # example-weighted metrics: loss (10*1 + 30*2)/40 = 1.75, WER (10*10 + 30*20)/40 = 17.5
    assert metrics["train_loss"] == pytest.approx(1.75, abs=1e-12)
    assert metrics["valid_wer"] == pytest.approx(17.5, abs=1e-12)
    row = strategy.history[-1]
    assert row["round"] == 1
    assert row["accepted"] is True
    assert row["rejected"] == {}
    assert row["clients"] == ["a", "b"]
    assert list(row["coefficients"]) == ["a", "b"]  # the clients' own cid, not node ids
    np.testing.assert_allclose([row["coefficients"]["a"], row["coefficients"]["b"]],
                               coefficients, rtol=1e-12)
    assert row["train_loss"] == pytest.approx(1.75) and row["valid_wer"] == pytest.approx(17.5)
    assert row["failures"] == 0
    # the new global model is what later updates are checked against
    assert np.array_equal(strategy.global_weights[0], out[0])


def test_client_without_cid_metric_is_named_by_node_id():
    results = [(Proxy("node-9"), fit_res(A, 10, train_loss=1.0))]
    strategy = make_strategy(min_fit_clients=1)
    strategy.aggregate_fit(1, results, [])
    assert strategy.history[-1]["coefficients"] == {"node-9": 1.0}


def test_nan_wer_client_excluded_under_wer_weighting():
    strategy = make_strategy(weight_strategy="wer")
    params, metrics = strategy.aggregate_fit(1, two_clients(a_metrics={"valid_wer": math.nan}),
                                             [])
    out = arrays_of(params)
    assert out[0].tolist() == [5.0, 6.0] and out[1].tolist() == 21  # b alone (coefficient 1)
    row = strategy.history[-1]
    assert list(row["rejected"]) == ["a"] and "valid_wer" in row["rejected"]["a"]
    assert row["coefficients"] == {"b": 1.0}
    assert metrics["valid_wer"] == 20.0 and metrics["train_loss"] == 2.0


def test_missing_loss_metric_rejected_under_loss_weighting():
    results = two_clients()
    del results[1][1].metrics["train_loss"]
    strategy = make_strategy(weight_strategy="loss")
    params, _ = strategy.aggregate_fit(1, results, [])
    assert arrays_of(params)[0].tolist() == [1.0, 2.0]
    assert list(strategy.history[-1]["rejected"]) == ["b"]


@pytest.mark.parametrize(
    "bad, reason",
    [
        ([f32(np.nan, 2), np.array(10, np.int64)], "NaN"),
        ([f32(1, np.inf), np.array(10, np.int64)], "Inf"),
        ([f32(1, 2)], "1 arrays instead of 2"),
        ([f32(1, 2), np.array(10, np.int64), f32(3)], "3 arrays instead of 2"),
        ([f32(1, 2, 3), np.array(10, np.int64)], "shape"),
        ([np.array([1.0, 2.0]), np.array(10, np.int64)], "dtype"),
    ],
)
def test_bad_update_rejected_under_num(bad, reason):
    strategy = make_strategy(weight_strategy="num")
    params, _ = strategy.aggregate_fit(1, two_clients(a_arrays=bad), [])
    out = arrays_of(params)
    assert out[0].tolist() == [5.0, 6.0] and out[1].tolist() == 21
    row = strategy.history[-1]
    assert list(row["rejected"]) == ["a"] and reason in row["rejected"]["a"]
    assert row["clients"] == ["b"] and row["coefficients"] == {"b": 1.0}


def test_undecodable_parameters_rejected():
    results = two_clients()
    results[0][1].parameters.tensors[0] = b"not an npy file"
    strategy = make_strategy()
    params, _ = strategy.aggregate_fit(1, results, [])
    assert arrays_of(params)[0].tolist() == [5.0, 6.0]
    assert "undecodable" in strategy.history[-1]["rejected"]["a"]


def test_tokenizer_mismatch_rejected():
    strategy = make_strategy(tokenizer_sha256="abc")
    results = two_clients(a_metrics={"tokenizer_sha256": "abc"},
                          b_metrics={"tokenizer_sha256": "def"})
    results.append((Proxy("node-3"), fit_res(B, 30, cid="c")))  # no hash reported at all
    params, _ = strategy.aggregate_fit(1, results, [])
    assert arrays_of(params)[0].tolist() == [1.0, 2.0]  # a alone
    row = strategy.history[-1]
    assert sorted(row["rejected"]) == ["b", "c"]
    assert "tokenizer" in row["rejected"]["b"]
    assert row["coefficients"] == {"a": 1.0}


def test_all_rejected_keeps_global_model():
    strategy = make_strategy(tokenizer_sha256="abc")
    assert strategy.aggregate_fit(1, two_clients(), []) == (None, {})
    row = strategy.history[-1]
    assert row["accepted"] is False and sorted(row["rejected"]) == ["a", "b"]
    assert "coefficients" not in row
    assert strategy.global_weights[0].tolist() == [0.0, 0.0]
    assert strategy.global_weights[1].tolist() == 0


def test_failures_not_accepted():
    strategy = make_strategy(accept_failures=False)
    failure = (Proxy("node-3"), fit_res(A, 10, code=Code.FIT_NOT_IMPLEMENTED, cid="c"))
    assert strategy.aggregate_fit(1, two_clients(), [failure]) == (None, {})
    row = strategy.history[-1]
    assert row["failures"] == 1 and row["accepted"] is False
    assert strategy.global_weights[0].tolist() == [0.0, 0.0]


def test_failures_accepted_by_default():
    strategy = make_strategy()
    params, _ = strategy.aggregate_fit(1, two_clients(), [RuntimeError("connection lost")])
    assert arrays_of(params)[0].tolist() == [4.0, 5.0]
    assert strategy.history[-1]["failures"] == 1


def test_server_train_fn_result_is_returned():
    calls = []

    def server_train(arrays, rnd):
        calls.append(([a.copy() for a in arrays], rnd))
        return [arrays[0] + np.float32(0.5), arrays[1] + 1]

    strategy = make_strategy(server_train_fn=server_train)
    params, metrics = strategy.aggregate_fit(1, two_clients(), [])
    assert len(calls) == 1
    got, rnd = calls[0]
    assert rnd == 1
    assert got[0].tolist() == [4.0, 5.0] and got[1].tolist() == 18  # the num-weighted average
    out = arrays_of(params)
    assert out[0].tolist() == [4.5, 5.5] and out[0].dtype == np.float32
    assert out[1].tolist() == 19 and out[1].dtype == np.int64
    assert strategy.global_weights[0].tolist() == [4.5, 5.5]
    assert metrics["train_loss"] == pytest.approx(1.75)
    row = strategy.history[-1]
    assert "server_train_seconds" in row
    # distance over float layers only: sqrt(0.5^2 + 0.5^2) = sqrt(0.5)
    assert row["server_train_delta"] == pytest.approx(0.7071067811865476, rel=1e-12)


@pytest.mark.parametrize(
    "trained",
    [
        [f32(np.nan, 1), np.array(1, np.int64)],
        [f32(1, 2, 3), np.array(1, np.int64)],
        [f32(1, 2)],
    ],
)
def test_bad_server_train_result_dropped(trained):
    strategy = make_strategy(server_train_fn=lambda arrays, rnd: trained)
    params, _ = strategy.aggregate_fit(1, two_clients(), [])
    out = arrays_of(params)
    assert out[0].tolist() == [4.0, 5.0] and out[1].tolist() == 18
    assert strategy.global_weights[0].tolist() == [4.0, 5.0]
    assert "server_train_delta" not in strategy.history[-1]


def test_start_round_offsets_round_numbers():
    rounds = []
    strategy = make_strategy(start_round=3,
                             server_train_fn=lambda arrays, rnd: rounds.append(rnd) or arrays)
    strategy.aggregate_fit(1, two_clients(), [])
    assert rounds == [4]
    assert strategy.history[-1]["round"] == 4
    assert [row["round"] for row in strategy.history] == [4]


def test_evaluate_records_test_metrics_and_calls_on_round_end():
    seen_eval = []
    ends = []

    def evaluate_fn(rnd, arrays, config):
        seen_eval.append((rnd, [a.copy() for a in arrays]))
        return 0.5, {"wer": 12.0, "cer": 3.0}

    def on_round_end(rnd, arrays, history):
        ends.append((rnd, arrays, [dict(row) for row in history]))

    fresh = make_strategy(evaluate_fn=evaluate_fn, on_round_end=on_round_end)
    # round 0 (initial model): evaluated, but no history row and no round end
    assert fresh.evaluate(0, ndarrays_to_parameters(GLOBAL)) == (0.5, {"wer": 12.0, "cer": 3.0})
    assert fresh.history == [] and ends == []
    assert seen_eval[0][0] == 0

    strategy = make_strategy(evaluate_fn=evaluate_fn, on_round_end=on_round_end, start_round=2)
    # a resumed run does not evaluate its starting model again
    assert strategy.evaluate(0, ndarrays_to_parameters(GLOBAL)) is None
    assert len(seen_eval) == 1

    params, _ = strategy.aggregate_fit(1, two_clients(), [])
    assert strategy.evaluate(1, params) == (0.5, {"wer": 12.0, "cer": 3.0})
    assert seen_eval[1][0] == 3
    assert seen_eval[1][1][0].tolist() == [4.0, 5.0]
    assert len(ends) == 1
    rnd, arrays, history = ends[0]
    assert rnd == 3
    assert arrays[0].tolist() == [4.0, 5.0] and arrays[1].tolist() == 18
    assert len(history) == 1
    row = history[0]
    assert row["round"] == 3
    assert row["test_loss"] == 0.5 and row["test_wer"] == 12.0 and row["test_cer"] == 3.0
    assert isinstance(row["seconds"], float) and row["seconds"] >= 0
    assert row["coefficients"] == {"a": 0.25, "b": 0.75}


def test_unknown_weight_strategy_rejected():
    with pytest.raises(ValueError, match="median"):
        TrainAfterAggregateStrategy(weight_strategy="median")


@pytest.mark.parametrize("weighting, n_a", [("num", 0), ("num", -10), ("loss", -10)])
def test_non_positive_sample_count_rejected(weighting, n_a):
    """A client claiming 0 (under num) or negative samples is rejected, not a crashed round."""
    strategy = make_strategy(weight_strategy=weighting)
    results = two_clients()
    results[0] = (results[0][0], fit_res(A, n_a, cid="a", train_loss=1.0, valid_wer=10.0))
    params, _ = strategy.aggregate_fit(1, results, [])
    assert "num_examples" in strategy.history[-1]["rejected"]["a"]
    np.testing.assert_array_equal(arrays_of(params)[0], B[0])  # b alone: coefficient 1


def test_duplicate_client_ids_kept_apart():
    strategy = make_strategy()
    results = two_clients(b_metrics={"cid": "a"})
    strategy.aggregate_fit(1, results, [])
    assert set(strategy.history[-1]["coefficients"]) == {"a", "a@node-2"}


def test_round_with_fewer_answers_than_min_fit_clients_is_not_used():
    strategy = make_strategy(min_fit_clients=3)
    params, metrics = strategy.aggregate_fit(1, two_clients(), [RuntimeError("client died")])
    assert params is None and metrics == {}
    assert strategy.history[-1]["accepted"] is False
    assert strategy.history[-1]["failures"] == 1
