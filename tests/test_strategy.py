"""Tests for TrainAfterAggregateStrategy, the legacy-Flower adapter over RoundCore.

Only what the adapter does: FitRes -> Update, clients named by their ``cid`` metric or Flower's
node id, failures named, the legacy server's round numbers mapped to the run's, EvaluateRes ->
Evaluation, the initial parameters taken from the core. What a round does is in
test_round_core.py. Results are constructed FitRes / EvaluateRes from a minimal ClientProxy;
expected numbers are literals worked out by hand.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    GetPropertiesRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from fedspeech.core.round import RoundCore, RoundSink
from strategy import TrainAfterAggregateStrategy


def f32(*values):
    return np.array(values, dtype=np.float32)


class Proxy(ClientProxy):
    """Flower's node; the strategy uses ``cid`` and asks ``get_properties`` for the client's id."""

    def __init__(self, cid: str, own_id: str | None = None):
        super().__init__(cid)
        self.own_id = own_id

    def get_properties(self, ins, timeout, group_id):
        if self.own_id is None:
            raise NotImplementedError  # an old client: named by its node id
        return GetPropertiesRes(status=Status(Code.OK, ""), properties={"cid": self.own_id})

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


class RecordingSink(RoundSink):
    def __init__(self):
        self.rounds: list[tuple[int, bool]] = []  # (round, model saved)
        self.best: list[int] = []

    def save_round(self, rnd, weights, history):
        self.rounds.append((rnd, weights is not None))

    def save_best(self, rnd, weights):
        self.best.append(rnd)


class SpyCore(RoundCore):
    """A real core that also keeps what the adapter handed to it."""

    def __init__(self, **kwargs):
        kwargs.setdefault("initial_weights", GLOBAL)
        kwargs.setdefault("sink", RecordingSink())
        super().__init__(**kwargs)
        self.calls: list[tuple[int, list, list[str], int]] = []
        self.evaluations: list[tuple[int, list]] = []

    def aggregate(self, rnd, updates, failed=(), failures=0, sampled=None):
        self.calls.append((rnd, list(updates), list(failed), failures))
        return super().aggregate(rnd, updates, failed=failed, failures=failures, sampled=sampled)

    def record_client_evaluation(self, rnd, evaluations, failures=0):
        self.evaluations.append((rnd, list(evaluations)))
        return super().record_client_evaluation(rnd, evaluations, failures)


GLOBAL = [f32(0, 0), np.array(0, np.int64)]
# client a: 10 examples, train_loss 1, valid_wer 10; client b: 30 examples, loss 2, WER 20
A = [f32(1, 2), np.array(10, np.int64)]
B = [f32(5, 6), np.array(21, np.int64)]


def fit_res(arrays, n, code=Code.OK, **metrics) -> FitRes:
    return FitRes(status=Status(code, ""), parameters=ndarrays_to_parameters(arrays),
                  num_examples=n, metrics=metrics)


def eval_res(n, loss, **metrics) -> EvaluateRes:
    return EvaluateRes(status=Status(Code.OK, ""), loss=loss, num_examples=n, metrics=metrics)


def two_clients(a_metrics=None, b_metrics=None, a_n=10):
    am = {"cid": "a", "train_loss": 1.0, "valid_wer": 10.0, **(a_metrics or {})}
    bm = {"cid": "b", "train_loss": 2.0, "valid_wer": 20.0, **(b_metrics or {})}
    return [(Proxy("node-1"), fit_res(A, a_n, **am)), (Proxy("node-2"), fit_res(B, 30, **bm))]


def make_strategy(core=None, **kwargs) -> TrainAfterAggregateStrategy:
    return TrainAfterAggregateStrategy(core or SpyCore(), **kwargs)


def arrays_of(params):
    assert params is not None
    return parameters_to_ndarrays(params)


# ---- construction --------------------------------------------------------------------------------
def test_initial_parameters_and_accept_failures_come_from_the_core():
    core = SpyCore(accept_failures=False)
    strategy = make_strategy(core)

    params = strategy.initialize_parameters(SimpleClientManager())

    out = arrays_of(params)
    assert out[0].tolist() == [0.0, 0.0] and out[0].dtype == np.float32
    assert out[1].tolist() == 0 and out[1].dtype == np.int64
    assert strategy.accept_failures is False
    assert "num" in repr(strategy)


# ---- fit: FitRes -> Update -----------------------------------------------------------------------
def test_fit_results_become_updates():
    core = SpyCore()
    strategy = make_strategy(core)
    results = two_clients(a_metrics={"tokenizer-sha256": "abc"})

    params, metrics = strategy.aggregate_fit(1, results, [])

    rnd, updates, failed, failures = core.calls[0]
    assert rnd == 1 and failed == [] and failures == 0
    a, b = updates
    assert (a.client, a.node, a.num_examples) == ("a", "node-1", 10)
    assert (b.client, b.node, b.num_examples) == ("b", "node-2", 30)
    assert a.metrics["train_loss"] == 1.0 and b.metrics["valid_wer"] == 20.0
    assert a.tokenizer_sha256 == "abc" and b.tokenizer_sha256 is None
    decoded = a.decode()
    assert decoded[0].tolist() == [1.0, 2.0] and decoded[1].tolist() == 10
    # the core's num-weighted average: [0.25*1 + 0.75*5, 0.25*2 + 0.75*6] = [4, 5]; 18.25 -> 18
    out = arrays_of(params)
    assert out[0].tolist() == [4.0, 5.0] and out[1].tolist() == 18
    # example-weighted: loss (10*1 + 30*2)/40 = 1.75, WER (10*10 + 30*20)/40 = 17.5
    assert metrics == pytest.approx({"train_loss": 1.75, "valid_wer": 17.5}, abs=1e-12)


def test_undecodable_parameters_rejected_not_raised():
    results = two_clients()
    results[0][1].parameters.tensors[0] = b"not an npy file"
    core = SpyCore()
    strategy = make_strategy(core)

    params, _ = strategy.aggregate_fit(1, results, [])

    assert arrays_of(params)[0].tolist() == [5.0, 6.0]
    assert core.history[-1]["rejected"]["a"].startswith("undecodable parameters")


def test_returned_metrics_are_the_kept_clients_only():
    # a is refused for its NaN WER: its train_loss 1 must not pull b's 2 down to 1.75
    core = SpyCore(weight_strategy="wer")
    strategy = make_strategy(core)

    params, metrics = strategy.aggregate_fit(1, two_clients(a_metrics={"valid_wer": math.nan}),
                                             [])

    assert arrays_of(params)[0].tolist() == [5.0, 6.0]
    assert metrics == {"train_loss": 2.0, "valid_wer": 20.0}


def test_returned_metrics_ignore_a_client_with_negative_samples():
    # with a's -10 examples counted, loss would be (-10*1 + 30*2)/20 = 2.5
    strategy = make_strategy()

    _, metrics = strategy.aggregate_fit(1, two_clients(a_n=-10), [])

    assert metrics == {"train_loss": 2.0, "valid_wer": 20.0}


def test_kept_model_returns_no_parameters():
    strategy = make_strategy(SpyCore(tokenizer_sha256="abc"))

    assert strategy.aggregate_fit(1, two_clients(), []) == (None, {})


# ---- names ---------------------------------------------------------------------------------------
def test_client_named_by_cid_metric_else_node_id():
    core = SpyCore()
    strategy = make_strategy(core)
    results = [(Proxy("node-1"), fit_res(A, 10, cid=7)),
               (Proxy("node-9"), fit_res(B, 30, train_loss=1.0))]

    strategy.aggregate_fit(1, results, [])

    assert [u.client for u in core.calls[0][1]] == ["7", "node-9"]
    assert core.history[-1]["coefficients"] == {"7": 0.25, "node-9": 0.75}


def test_duplicate_client_ids_kept_apart():
    core = SpyCore()
    strategy = make_strategy(core)

    strategy.aggregate_fit(1, two_clients(b_metrics={"cid": "a"}), [])

    assert core.history[-1]["coefficients"] == {"a": 0.25, "a@node-2": 0.75}


def test_clients_asked_but_silent_are_named_as_failed():
    # arrange: three connected clients; node-3 tells its id when asked, node-4 cannot
    core = SpyCore()
    strategy = make_strategy(core, min_fit_clients=3, min_available_clients=3)
    manager = SimpleClientManager()
    proxies = [Proxy("node-1", "a"), Proxy("node-2", "b"), Proxy("node-3", "c"), Proxy("node-4")]
    for proxy in proxies:
        manager.register(proxy)
    instructions = strategy.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager)
    assert sorted(proxy.cid for proxy, _ in instructions) == ["node-1", "node-2", "node-3",
                                                              "node-4"]
    # act: only a and b answer
    strategy.aggregate_fit(1, two_clients(), [RuntimeError("gone"), RuntimeError("gone")])
    # assert
    assert sorted(core.calls[0][2]) == ["c", "node-4"] and core.calls[0][3] == 2
    row = core.history[-1]
    assert row["failed_clients"] == ["c", "node-4"] and row["failures"] == 2


def test_failures_described_in_the_log(caplog):
    strategy = make_strategy()
    refused = (Proxy("node-3"), fit_res(A, 10, code=Code.FIT_NOT_IMPLEMENTED, cid="c"))

    with caplog.at_level(logging.WARNING, logger="strategy"):
        strategy.aggregate_fit(1, two_clients(), [refused, ConnectionError()])

    text = caplog.text
    assert "client c returned status FIT_NOT_IMPLEMENTED" in text
    assert "ConnectionError: connection closed" in text


def test_failures_not_accepted_keep_the_model():
    core = SpyCore(accept_failures=False)
    strategy = make_strategy(core)

    assert strategy.aggregate_fit(1, two_clients(), [RuntimeError("lost")]) == (None, {})
    assert core.calls[0][3] == 1
    assert core.history[-1]["accepted"] is False


# ---- legacy round numbers ------------------------------------------------------------------------
def test_resumed_run_numbers_legacy_rounds_after_its_history():
    seen = []
    sink = RecordingSink()
    core = SpyCore(history=[{"round": 1}, {"round": 2}, {"round": 3}], sink=sink,
                   evaluate=lambda arrays, rnd: seen.append(rnd) or (0.5, {"wer": 12.0}))
    configs = []
    strategy = make_strategy(core, min_fit_clients=1, min_evaluate_clients=1,
                             min_available_clients=1,
                             on_fit_config_fn=lambda rnd: configs.append(rnd) or {},
                             on_evaluate_config_fn=lambda rnd: configs.append(rnd) or {})
    manager = SimpleClientManager()
    manager.register(Proxy("node-1", "a"))
    params = ndarrays_to_parameters(GLOBAL)

    # a resumed run does not evaluate its starting model again
    assert strategy.evaluate(0, params) is None
    strategy.configure_fit(1, params, manager)
    fit_params, _ = strategy.aggregate_fit(1, two_clients(), [])
    assert strategy.evaluate(1, fit_params) == (0.5, {"wer": 12.0})
    strategy.configure_evaluate(1, fit_params, manager)

    assert configs == [4, 4]  # the clients' config functions see the run's round
    assert seen == [4]
    assert core.calls[0][0] == 4
    assert [row["round"] for row in core.history] == [1, 2, 3, 4]
    assert core.history[-1]["test_wer"] == 12.0
    assert sink.rounds == [(4, True)]


def test_fresh_run_evaluates_its_initial_model_without_a_round():
    seen = []
    sink = RecordingSink()
    core = SpyCore(sink=sink, evaluate=lambda arrays, rnd: seen.append(rnd) or (0.5, {}))
    strategy = make_strategy(core)

    assert strategy.evaluate(0, ndarrays_to_parameters(GLOBAL)) == (0.5, {})

    assert seen == [0] and core.history == [] and sink.rounds == []


# ---- evaluation: EvaluateRes -> Evaluation -------------------------------------------------------
def test_aggregate_evaluate_records_the_clients_evaluation():
    sink = RecordingSink()
    core = SpyCore(sink=sink, history=[{"round": 1}])
    strategy = make_strategy(core)
    results = [(Proxy("node-1"), eval_res(10, 1.0, wer=20.0, cid="a")),
               (Proxy("node-2"), eval_res(30, 2.0, wer=40.0))]

    loss, metrics = strategy.aggregate_evaluate(1, results, [])

    # loss (10*1 + 30*2)/40 = 1.75; WER (10*20 + 30*40)/40 = 35
    assert loss == 1.75 and metrics == {"wer": 35.0}
    rnd, evaluations = core.evaluations[0]
    assert rnd == 2
    assert [(e.client, e.num_examples, e.loss) for e in evaluations] == [("a", 10, 1.0),
                                                                        ("node-2", 30, 2.0)]
    row = core.history[-1]
    assert row["round"] == 2 and row["client_eval_wer"] == 35.0 and row["best"] is True
    assert sink.best == [2]
    assert sink.rounds == []  # recorded once the server's own evaluation is done too
    strategy.evaluate(1, None)
    assert sink.rounds == [(2, True)]  # once, with the model


def test_aggregate_evaluate_with_failures_not_accepted_records_nothing():
    core = SpyCore(accept_failures=False)
    strategy = make_strategy(core)
    results = [(Proxy("node-1"), eval_res(10, 1.0, wer=20.0))]

    assert strategy.aggregate_evaluate(1, results, [RuntimeError("lost")]) == (None, {})
    assert core.history == []  # the one evaluation that came is not recorded


def test_aggregate_evaluate_without_results():
    sink = RecordingSink()
    strategy = make_strategy(SpyCore(sink=sink))

    assert strategy.aggregate_evaluate(1, [], [RuntimeError("lost")]) == (None, {})
    assert sink.rounds == []


# ---- cross-device sampling ---------------------------------------------------------------------
@pytest.mark.parametrize(("fraction", "min_fit", "expected"),
                         [(1.0, 1, 8), (0.5, 1, 4), (0.25, 3, 3), (0.0, 3, 3)])
def test_fraction_fit_samples_that_share_of_the_connected_clients(fraction, min_fit, expected):
    # arrange: eight connected clients
    strategy = make_strategy(SpyCore(), fraction_fit=fraction, min_fit_clients=min_fit,
                             min_available_clients=3)
    manager = SimpleClientManager()
    for k in range(8):
        manager.register(Proxy(f"node-{k}", str(k)))
    # act
    instructions = strategy.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager)
    # assert: 8 x 0.5 = 4; 8 x 0.25 = 2 is below --min_fit_clients 3; a share of 0: exactly 3
    assert len(instructions) == expected
