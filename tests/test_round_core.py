"""Tests for RoundCore: one federated round with no Flower types, fed :class:`Update` objects.

Each test arranges a core and its updates, acts once, and asserts on what the core returned, its
history row and what its :class:`RoundSink` received. Expected numbers are literals worked out by
hand (formula in the comment next to each), never the output of the function under test.
"""

from __future__ import annotations

import itertools
import math
import time
import tracemalloc

import numpy as np
import pytest

from fedspeech.core.round import Evaluation, RoundCore, RoundSink, Update

# softmax of (0, -1): [1, e^-1] / (1 + e^-1), e^-1 = 0.36787944117144233
SOFTMAX_0_M1 = [0.7310585786300049, 0.2689414213699951]
# softmax of (0, -10): [1, e^-10] / (1 + e^-10), e^-10 = 4.5399929762484854e-05
SOFTMAX_0_M10 = [0.9999546021312976, 4.5397868702434395e-05]


def f32(*values):
    return np.array(values, dtype=np.float32)


class RecordingSink(RoundSink):
    """Keeps copies of everything the core hands over."""

    def __init__(self):
        self.rounds: list[tuple[int, list[np.ndarray] | None, list[dict]]] = []
        self.best: list[tuple[int, list[np.ndarray]]] = []

    def save_round(self, rnd, weights, history):
        copy = None if weights is None else [w.copy() for w in weights]
        self.rounds.append((rnd, copy, [row.to_dict() for row in history]))

    def save_best(self, rnd, weights):
        self.best.append((rnd, [w.copy() for w in weights]))


GLOBAL = [f32(0, 0), np.array(0, np.int64)]
# client a: 10 examples, train_loss 1, valid_wer 10; client b: 30 examples, loss 2, WER 20
A = [f32(1, 2), np.array(10, np.int64)]
B = [f32(5, 6), np.array(21, np.int64)]


def update(client, arrays, n, node=None, sha=None, **metrics) -> Update:
    return Update(client=client, node=node or f"node-{client}", num_examples=n, metrics=metrics,
                  decode=lambda: arrays, tokenizer_sha256=sha)


def two_updates(a_arrays=None, b_arrays=None, a_metrics=None, b_metrics=None, a_n=10):
    am = {"train_loss": 1.0, "valid_wer": 10.0, **(a_metrics or {})}
    bm = {"train_loss": 2.0, "valid_wer": 20.0, **(b_metrics or {})}
    return [
        update("a", A if a_arrays is None else a_arrays, a_n, **am),
        update("b", B if b_arrays is None else b_arrays, 30, **bm),
    ]


def make_core(**kwargs) -> RoundCore:
    kwargs.setdefault("initial_weights", GLOBAL)
    kwargs.setdefault("sink", RecordingSink())
    return RoundCore(**kwargs)


# ---- weighting -----------------------------------------------------------------------------------
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
def test_aggregate_weightings(weighting, coefficients, expected_float, expected_int):
    core = make_core(weight_strategy=weighting)

    out = core.aggregate(1, two_updates())

    assert len(out) == 2
    assert out[0].dtype == np.float32 and out[1].dtype == np.int64
    np.testing.assert_allclose(out[0], expected_float, rtol=1e-6)
    assert out[1].tolist() == expected_int
    row = core.history[-1]
    assert row["round"] == 1
    assert row["accepted"] is True
    assert row["rejected"] == {}
    assert row["clients"] == ["a", "b"]
    assert row["failures"] == 0 and row["failed_clients"] == []
    np.testing.assert_allclose([row["coefficients"]["a"], row["coefficients"]["b"]],
                               coefficients, rtol=1e-12)
    # example-weighted metrics: loss (10*1 + 30*2)/40 = 1.75, WER (10*10 + 30*20)/40 = 17.5
    assert row["train_loss"] == pytest.approx(1.75, abs=1e-12)
    assert row["valid_wer"] == pytest.approx(17.5, abs=1e-12)
    assert core.fit_metrics == pytest.approx({"train_loss": 1.75, "valid_wer": 17.5}, abs=1e-12)
    # the new global model is what later updates are checked against
    assert core.weights is out


def test_unknown_weight_strategy_rejected():
    with pytest.raises(ValueError, match="median"):
        make_core(weight_strategy="median")


# ---- screening -----------------------------------------------------------------------------------
def test_nan_wer_client_excluded_under_wer_weighting():
    core = make_core(weight_strategy="wer")

    out = core.aggregate(1, two_updates(a_metrics={"valid_wer": math.nan}))

    assert out[0].tolist() == [5.0, 6.0] and out[1].tolist() == 21  # b alone (coefficient 1)
    row = core.history[-1]
    assert list(row["rejected"]) == ["a"] and "valid_wer" in row["rejected"]["a"]
    assert row["coefficients"] == {"b": 1.0}
    # the row's and the returned metrics are the kept client's only
    assert row["valid_wer"] == 20.0 and row["train_loss"] == 2.0
    assert core.fit_metrics == {"train_loss": 2.0, "valid_wer": 20.0}


def test_missing_loss_metric_rejected_under_loss_weighting():
    updates = two_updates()
    del updates[1].metrics["train_loss"]
    core = make_core(weight_strategy="loss")

    out = core.aggregate(1, updates)

    assert out[0].tolist() == [1.0, 2.0]
    assert core.history[-1]["rejected"] == {"b": "train_loss missing or not finite"}


@pytest.mark.parametrize(
    "bad, reason",
    [
        ([f32(np.nan, 2), np.array(10, np.int64)], "array 0 contains NaN or Inf"),
        ([f32(1, np.inf), np.array(10, np.int64)], "array 0 contains NaN or Inf"),
        ([f32(1, 2)], "1 arrays instead of 2"),
        ([f32(1, 2), np.array(10, np.int64), f32(3)], "3 arrays instead of 2"),
        ([f32(1, 2, 3), np.array(10, np.int64)], "array 0 has shape (3,) instead of (2,)"),
        ([np.array([1.0, 2.0]), np.array(10, np.int64)],
         "array 0 has dtype float64 instead of float32"),
    ],
)
def test_bad_update_rejected_under_num(bad, reason):
    core = make_core(weight_strategy="num")

    out = core.aggregate(1, two_updates(a_arrays=bad))

    assert out[0].tolist() == [5.0, 6.0] and out[1].tolist() == 21
    row = core.history[-1]
    assert row["rejected"] == {"a": reason}
    # b's coefficient 30/40 was worked out with a; renormalised alone it is 1
    assert row["clients"] == ["b"] and row["coefficients"] == {"b": 1.0}


def test_undecodable_update_rejected():
    def broken():
        raise ValueError("not an npy file")

    updates = two_updates()
    updates[0].decode = broken
    core = make_core()

    out = core.aggregate(1, updates)

    assert out[0].tolist() == [5.0, 6.0]
    assert core.history[-1]["rejected"] == {"a": "undecodable parameters (ValueError)"}


def test_tokenizer_mismatch_rejected():
    updates = two_updates()
    updates[0].tokenizer_sha256 = "abc"
    updates[1].tokenizer_sha256 = "def"
    updates.append(update("c", B, 30))  # no hash reported at all
    core = make_core(tokenizer_sha256="abc")

    out = core.aggregate(1, updates)

    assert out[0].tolist() == [1.0, 2.0]  # a alone
    row = core.history[-1]
    assert sorted(row["rejected"]) == ["b", "c"]
    assert row["rejected"]["b"].startswith("tokenizer mismatch (client def, server abc)")
    assert "--tokenizer_path" in row["rejected"]["c"]
    assert row["coefficients"] == {"a": 1.0}


def test_decode_not_called_for_an_update_refused_on_its_metrics():
    calls = []
    updates = two_updates(a_metrics={"valid_wer": math.inf})
    updates[0].decode = lambda: calls.append("a") or A
    core = make_core(weight_strategy="wer")

    core.aggregate(1, updates)

    assert calls == []


@pytest.mark.parametrize("weighting, n_a", [("num", 0), ("num", -10), ("loss", -10)])
def test_non_positive_sample_count_rejected(weighting, n_a):
    """A client claiming 0 (under num) or negative samples is rejected, not a crashed round."""
    core = make_core(weight_strategy=weighting)

    out = core.aggregate(1, two_updates(a_n=n_a))

    assert core.history[-1]["rejected"] == {"a": f"num_examples must be positive, got {n_a}"}
    np.testing.assert_array_equal(out[0], B[0])  # b alone: coefficient 1
    assert core.fit_metrics == {"train_loss": 2.0, "valid_wer": 20.0}


def test_all_rejected_keeps_global_model():
    core = make_core(tokenizer_sha256="abc")

    assert core.aggregate(1, two_updates()) is None

    row = core.history[-1]
    assert row["accepted"] is False and sorted(row["rejected"]) == ["a", "b"]
    assert row["clients"] == []
    assert "coefficients" not in row
    assert core.weights[0].tolist() == [0.0, 0.0] and core.weights[1].tolist() == 0
    assert core.fit_metrics == {}


def test_failures_not_accepted():
    core = make_core(accept_failures=False)

    assert core.aggregate(1, two_updates(), failed=["c"], failures=1) is None

    row = core.history[-1]
    assert row["failures"] == 1 and row["failed_clients"] == ["c"]
    assert row["accepted"] is False
    assert core.weights[0].tolist() == [0.0, 0.0]


def test_failures_accepted_by_default():
    core = make_core()

    out = core.aggregate(1, two_updates(), failed=["d", "c"], failures=2)

    assert out[0].tolist() == [4.0, 5.0]
    row = core.history[-1]
    assert row["failures"] == 2 and row["failed_clients"] == ["c", "d"]
    assert row["accepted"] is True


def test_round_with_fewer_updates_than_min_updates_is_not_used():
    core = make_core(min_updates=3)

    assert core.aggregate(1, two_updates(), failures=1) is None

    row = core.history[-1]
    assert row["accepted"] is False and row["failures"] == 1
    assert core.weights[0].tolist() == [0.0, 0.0]


# ---- names ---------------------------------------------------------------------------------------
def test_duplicate_client_ids_kept_apart():
    updates = [update("a", B, 30, node="node-2"), update("a", A, 10, node="node-1")]
    core = make_core()

    out = core.aggregate(1, updates)

    # sorted by (name, node): node-1's is "a", node-2's "a@node-2"; both counted
    assert core.history[-1]["coefficients"] == {"a": 0.25, "a@node-2": 0.75}
    assert out[0].tolist() == [4.0, 5.0]


def test_clients_recorded_in_name_order_whatever_the_arrival_order():
    core = make_core()

    core.aggregate(1, list(reversed(two_updates())))

    row = core.history[-1]
    assert row["clients"] == ["a", "b"]
    assert list(row["coefficients"]) == ["a", "b"]


# ---- same seed, same numbers ---------------------------------------------------------------------
def test_sum_order_is_fixed_by_client_name():
    # arrange: equal counts, so c = 1/3 each (1/3 + 1/3 + 1/3 == 1.0 in float64). In float64,
    # 1e20/3 + 1/3 rounds back to 1e20/3 (its ulp is 4096), so a, b, c summed in name order give
    # (1e20/3 + 1/3) - 1e20/3 = 0 exactly, while the order a, c, b would give 1/3.
    big = np.float32(1e20)
    layers = {"a": f32(big, 1.0), "b": f32(1.0, 1.0), "c": f32(-big, 1.0)}
    assert (np.float64(big) / 3 + 1 / 3) - np.float64(big) / 3 == 0.0
    assert (np.float64(big) / 3 - np.float64(big) / 3) + 1 / 3 != 0.0
    results = []
    for order in itertools.permutations("abc"):
        core = make_core(initial_weights=[f32(0, 0)])
        # act
        out = core.aggregate(1, [update(k, [layers[k]], 10) for k in order])
        results.append((order, out[0], core.history[-1]["coefficients"]))
    # assert
    for order, out, coefficients in results:
        assert out.tolist() == [0.0, 1.0], order
        assert coefficients == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, order


def test_same_updates_in_any_order_give_bit_identical_results():
    # arrange: cancelling float32 values (1e8, 1, -1e8 patterns) under loss weighting, a float64
    # layer where the summing order shows in the last bits, and an integer layer
    values = {
        "a": [f32(1e8, 1.0, 3.0, 1e8), np.array([1e8, 1.0, 0.1]), np.array(3, np.int64)],
        "b": [f32(1.0, -1e8, 1e8, 7.0), np.array([1.0, -1e8, 0.2]), np.array(8, np.int64)],
        "c": [f32(-1e8, 1e8, -1e8, -1e8), np.array([-1e8, 1e8, 0.3]), np.array(1, np.int64)],
        "d": [f32(0.5, 0.25, 1e-3, 1e8), np.array([0.7, 0.9, 1e8]), np.array(5, np.int64)],
    }
    losses = {"a": 0.3, "b": 1.1, "c": 2.0, "d": 0.7}
    initial = [np.zeros(4, np.float32), np.zeros(3), np.array(0, np.int64)]
    outcomes = []
    for order in itertools.permutations("abcd"):
        core = make_core(initial_weights=initial, weight_strategy="loss")
        updates = [update(k, values[k], 10, train_loss=losses[k]) for k in order]
        # act
        out = core.aggregate(1, updates)
        outcomes.append((order, out, core.history[-1]["coefficients"]))
    # assert: every order gives the arrays and coefficients of the first, bit for bit
    _, first, first_coefficients = outcomes[0]
    assert list(first_coefficients) == ["a", "b", "c", "d"]
    for order, out, coefficients in outcomes[1:]:
        for x, y in zip(out, first, strict=True):
            assert np.array_equal(x, y) and x.dtype == y.dtype, order
        assert list(coefficients.items()) == list(first_coefficients.items()), order


# ---- memory --------------------------------------------------------------------------------------
MODEL_PARAMS = 50_000_000
LAYERS = [30_000_000, 15_000_000, 4_999_000, 1_000]  # float32: 200 MB in all
MODEL_BYTES = 4 * MODEL_PARAMS


def lazy_update(k: int, sizes, value: float) -> Update:
    """An update whose arrays exist only while the core holds them (a fresh decode each time)."""
    return Update(client=f"c{k:02d}", node=f"node-{k}", num_examples=k + 1, metrics={},
                  decode=lambda: [np.full(s, value, np.float32) for s in sizes])


def test_sixteen_updates_of_a_50m_model_stay_under_four_model_sizes():
    # arrange: the global model exists before tracing; each update is created on decode
    assert sum(LAYERS) == MODEL_PARAMS
    core = make_core(initial_weights=[np.zeros(s, np.float32) for s in LAYERS])
    updates = [lazy_update(k, LAYERS, float(k)) for k in range(16)]
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        # act
        out = core.aggregate(1, updates)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # assert: the accumulator (2 model sizes in float64) plus one decoded update, and little more
    extra = (peak - baseline) / MODEL_BYTES
    print(f"16 x 50M-parameter updates: peak {extra:.3f} model sizes, {seconds:.1f} s")
    assert extra < 4
    # client k: k + 1 examples, every weight k: sum k(k+1) / sum (k+1) = (1240 + 120) / 136 = 10
    assert [layer.dtype for layer in out] == [np.float32] * 4
    assert all(layer.shape == (s,) for layer, s in zip(out, LAYERS, strict=True))
    assert all(np.all(layer == 10.0) for layer in out)


def test_a_refused_update_is_dropped_before_the_next_is_decoded():
    # arrange: a 5M-parameter model; the first update by name carries a NaN and is refused
    sizes = [4_000_000, 1_000_000]
    model_bytes = 4 * sum(sizes)
    core = make_core(initial_weights=[np.zeros(s, np.float32) for s in sizes])
    updates = [lazy_update(0, sizes, math.nan)] + [lazy_update(k, sizes, 2.0) for k in (1, 2, 3)]
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        # act
        out = core.aggregate(1, updates)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # assert: accumulator (2) + one update (1) + screening temporaries; two updates would be 4
    assert (peak - baseline) / model_bytes < 3.5
    assert list(core.history[-1]["rejected"]) == ["c00"]
    assert all(np.all(layer == 2.0) for layer in out)


# ---- server-side training ------------------------------------------------------------------------
def test_server_train_result_is_used():
    calls = []

    def server_train(arrays, rnd):
        calls.append(([a.copy() for a in arrays], rnd))
        return [arrays[0] + np.float32(0.5), arrays[1] + 1]

    core = make_core(server_train=server_train)

    out = core.aggregate(1, two_updates())

    assert len(calls) == 1
    got, rnd = calls[0]
    assert rnd == 1
    assert got[0].tolist() == [4.0, 5.0] and got[1].tolist() == 18  # the num-weighted average
    assert out[0].tolist() == [4.5, 5.5] and out[0].dtype == np.float32
    assert out[1].tolist() == 19 and out[1].dtype == np.int64
    assert core.weights[0].tolist() == [4.5, 5.5]
    row = core.history[-1]
    assert row["server_train_seconds"] >= 0
    # distance over float layers only: sqrt(0.5^2 + 0.5^2) = sqrt(0.5)
    assert row["server_train_delta"] == pytest.approx(0.7071067811865476, rel=1e-12)
    assert row["train_loss"] == pytest.approx(1.75)  # the clients', not the server's


@pytest.mark.parametrize(
    "trained",
    [
        [f32(np.nan, 1), np.array(1, np.int64)],
        [f32(1, 2, 3), np.array(1, np.int64)],
        [f32(1, 2)],
    ],
)
def test_bad_server_train_result_dropped(trained):
    core = make_core(server_train=lambda arrays, rnd: trained)

    out = core.aggregate(1, two_updates())

    assert out[0].tolist() == [4.0, 5.0] and out[1].tolist() == 18
    assert core.weights[0].tolist() == [4.0, 5.0]
    assert "server_train_delta" not in core.history[-1]


# ---- round numbers -------------------------------------------------------------------------------
def test_history_offsets_round_numbers():
    rounds = []
    history = [{"round": 1}, {"round": 2}, {"round": 3}]
    core = make_core(history=history,
                     server_train=lambda arrays, rnd: rounds.append(rnd) or arrays)

    assert core.start_round == 3
    rnd = core.round_number(1)
    core.aggregate(rnd, two_updates())

    assert rnd == 4 and rounds == [4]
    assert [row["round"] for row in core.history] == [1, 2, 3, 4]
    assert len(history) == 3  # the caller's list is not the core's


def test_fresh_core_starts_at_round_one():
    core = make_core(row_defaults={"weight_strategy": "num"})

    assert core.start_round == 0 and core.round_number(1) == 1
    core.aggregate(1, two_updates())
    assert core.history[0]["round"] == 1 and core.history[0]["weight_strategy"] == "num"


# ---- evaluation and the sink ---------------------------------------------------------------------
def test_evaluate_records_test_metrics_and_the_round_once():
    seen = []

    def evaluate(arrays, rnd):
        seen.append((rnd, [a.copy() for a in arrays]))
        return 0.5, {"wer": 12.0, "cer": 3.0}

    sink = RecordingSink()
    core = make_core(evaluate=evaluate, sink=sink)

    # round 0 (the initial model): evaluated, but no history row and nothing recorded
    assert core.evaluate(core.round_number(0)) == (0.5, {"wer": 12.0, "cer": 3.0})
    assert core.history == [] and sink.rounds == [] and seen[0][0] == 0

    core.begin(1)
    core.aggregate(1, two_updates())
    assert sink.rounds == []  # not recorded before its evaluation
    assert core.evaluate(1) == (0.5, {"wer": 12.0, "cer": 3.0})

    assert seen[1][0] == 1 and seen[1][1][0].tolist() == [4.0, 5.0]
    (saved_rnd, weights, history), = sink.rounds  # recorded once
    assert saved_rnd == 1
    assert weights[0].tolist() == [4.0, 5.0] and weights[1].tolist() == 18
    row = history[-1]
    assert row["test_loss"] == 0.5 and row["test_wer"] == 12.0 and row["test_cer"] == 3.0
    assert isinstance(row["seconds"], float) and row["seconds"] >= 0
    assert row["server_peak_rss_mb"] > 0
    assert row["coefficients"] == {"a": 0.25, "b": 0.75}
    assert sink.best == []


def test_resumed_core_skips_the_initial_evaluation_and_counts_on():
    seen = []
    sink = RecordingSink()
    core = make_core(evaluate=lambda arrays, rnd: seen.append(rnd) or (0.5, {"wer": 1.0}),
                     sink=sink, history=[{"round": 2}])

    assert core.evaluate(core.round_number(0)) is None  # evaluated when round 2 ended
    assert seen == [] and [row.to_dict() for row in core.history] == [{"round": 2}]
    rnd = core.round_number(1)
    core.begin(rnd)
    core.aggregate(rnd, two_updates())
    core.evaluate(rnd)
    assert seen == [3] and [r for r, _, _ in sink.rounds] == [3]
    assert [row["round"] for row in sink.rounds[0][2]] == [2, 3]


@pytest.mark.parametrize("order", ["server first", "clients first"])
def test_round_with_client_evaluation_is_recorded_once_after_both(order):
    sink = RecordingSink()
    core = make_core(sink=sink, evaluate=lambda arrays, rnd: (0.5, {"wer": 9.0}),
                     client_evaluation=True)
    core.begin(1)
    core.aggregate(1, two_updates())
    phases = [lambda: core.evaluate(1),
              lambda: core.record_client_evaluation(1, evaluations(20.0, 40.0))]
    if order == "clients first":
        phases.reverse()

    phases[0]()
    assert sink.rounds == []  # half a round is not recorded
    phases[1]()

    (rnd, weights, history), = sink.rounds
    assert rnd == 1 and weights is not None
    assert history[0]["test_wer"] == 9.0 and history[0]["client_eval_wer"] == 35.0


def test_no_client_replies_still_complete_the_round():
    sink = RecordingSink()
    core = make_core(sink=sink, client_evaluation=True)
    core.begin(1)
    core.aggregate(1, two_updates())
    core.evaluate(1)
    assert sink.rounds == []

    assert core.record_client_evaluation(1, []) == {}

    (rnd, _, history), = sink.rounds
    assert rnd == 1 and "client_eval_wer" not in history[0]


def test_failed_evaluations_not_accepted_record_none_of_them():
    sink = RecordingSink()
    core = make_core(sink=sink, client_evaluation=True, accept_failures=False)
    core.begin(1)
    core.evaluate(1)

    assert core.record_client_evaluation(1, evaluations(20.0, 40.0), failures=1) == {}

    (_, _, history), = sink.rounds
    assert "client_eval_wer" not in history[0]


def test_evaluate_without_an_evaluate_function_still_records_the_round():
    sink = RecordingSink()
    core = make_core(sink=sink)
    core.begin(1)

    assert core.evaluate(1) is None

    (rnd, _, history), = sink.rounds
    assert rnd == 1 and "test_wer" not in history[0]


# ---- the best model (federated validation WER) ---------------------------------------------------
def evaluations(wer_a, wer_b, loss_a=1.0, loss_b=2.0):
    return [Evaluation("a", 10, loss_a, {"wer": wer_a, "cid": "a"}),
            Evaluation("b", 30, loss_b, {"wer": wer_b, "cid": "b"})]


def test_client_evaluation_recorded_and_first_wer_is_best():
    sink = RecordingSink()
    core = make_core(sink=sink)

    metrics = core.record_client_evaluation(1, evaluations(20.0, 40.0))

    # loss (10*1 + 30*2)/40 = 1.75; WER (10*20 + 30*40)/40 = 35
    assert metrics == {"loss": 1.75, "wer": 35.0}
    row = core.history[-1]
    assert row["client_eval_loss"] == 1.75 and row["client_eval_wer"] == 35.0
    assert row["client_eval_clients"] == 2
    assert row["best"] is True
    assert core.best_wer == 35.0
    assert [(rnd, w[0].tolist()) for rnd, w in sink.best] == [(1, [0.0, 0.0])]


def test_best_model_saved_only_when_the_clients_dev_wer_improves():
    sink = RecordingSink()
    # the server's test WER gets better every round; it must play no part
    test_wers = iter([90.0, 5.0, 1.0, 80.0])
    core = make_core(sink=sink, evaluate=lambda arrays, rnd: (0.1, {"wer": next(test_wers)}),
                     client_evaluation=True)
    dev_wers = {1: (40.0, 40.0),  # 40: best
                2: (44.0, 44.0),  # 44: worse, though test WER 90 -> 5
                3: (40.0, 40.0),  # 40: equal is no improvement, though test WER 1
                4: (30.0, 34.0)}  # (10*30 + 30*34)/40 = 33: best, though test WER 80

    for rnd, (wer_a, wer_b) in dev_wers.items():
        core.aggregate(rnd, two_updates())
        core.evaluate(rnd)
        core.record_client_evaluation(rnd, evaluations(wer_a, wer_b))

    assert [rnd for rnd, _ in sink.best] == [1, 4]
    assert [rnd for rnd, _, _ in sink.rounds] == [1, 2, 3, 4]  # each round recorded once
    assert [row.get("best", False) for row in core.history] == [True, False, False, True]
    assert [row["test_wer"] for row in core.history] == [90.0, 5.0, 1.0, 80.0]
    assert core.best_wer == 33.0
    assert sink.best[-1][1][0].tolist() == [4.0, 5.0]  # the model of round 4


@pytest.mark.parametrize("metrics", [{"wer": math.nan}, {"wer": math.inf}, {}, {"wer": "12"}])
def test_client_evaluation_without_a_finite_wer_never_saves(metrics):
    sink = RecordingSink()
    core = make_core(sink=sink)

    core.record_client_evaluation(1, [Evaluation("a", 10, 1.0, metrics)])

    assert sink.best == [] and "best" not in core.history[-1]
    assert core.best_wer == math.inf


def test_no_evaluations_record_nothing():
    core = make_core()

    assert core.record_client_evaluation(1, []) == {}
    assert core.history == []


def test_rebuilt_core_resumes_best_wer_from_its_history():
    history = [
        {"round": 1, "client_eval_wer": 30.0, "test_wer": 2.0, "best": True},
        {"round": 2, "client_eval_wer": 25.0, "test_wer": 50.0, "best": True},
        {"round": 3, "client_eval_wer": None, "test_wer": 1.0},
        {"round": 4, "client_eval_wer": 27.0},
    ]
    sink = RecordingSink()
    core = make_core(sink=sink, history=history)

    assert core.best_wer == 25.0  # the lowest client WER; test WERs ignored
    core.record_client_evaluation(core.round_number(1), evaluations(26.0, 26.0))
    assert sink.best == []
    core.record_client_evaluation(core.round_number(2), evaluations(24.0, 24.0))
    assert [rnd for rnd, _ in sink.best] == [6]
    assert core.history[-1]["best"] is True and "best" not in core.history[-2]
