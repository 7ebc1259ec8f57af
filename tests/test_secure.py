"""Secure aggregation (SecAgg+): what a client hands over and how the server reads the sum back,
through Flower's own quantisation; the adapter that gives the sum to the round core; the settings
it refuses. The real SecAgg+ run is the locked deployment's in tests/test_security.py."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from test_strategy import Proxy, SpyCore, arrays_of, fit_res

from fedspeech.base.errors import UsageError
from fedspeech.core.settings import ServerSettings, check_server
from fedspeech.math.secure import INT_SCALE, apply_change, beyond_range, encode_change
from fedspeech.transports.secure_app import SecureStrategy, is_secure_message

G = [np.array([0.5, -1.0], np.float32), np.array(100, np.int64)]
A = [np.array([0.75, -1.5], np.float32), np.array(110, np.int64)]  # 10 examples
B = [np.array([0.25, 0.0], np.float32), np.array(121, np.int64)]  # 30 examples


def test_a_change_travels_as_floats_and_comes_back_in_the_model_dtypes():
    change = encode_change(A, G)
    assert change[0].tolist() == [0.25, -0.5]
    assert change[1] == pytest.approx(10 / INT_SCALE)  # a counter, scaled into SecAgg's range
    back = apply_change(G, change)
    assert [b.dtype for b in back] == [np.float32, np.int64]
    assert back[0].tolist() == A[0].tolist() and int(back[1]) == 110


def test_the_weighted_mean_change_through_flowers_quantisation():
    """SecAgg+'s arithmetic without the masks (they cancel in the sum), with Flower's own
    quantise/dequantise: client k sends quantise(change_k * n_k / max_weight); the server divides
    the dequantised sum by the sum of the weights. The model is the plain weighted mean within
    the quantisation's error."""
    levels, r, max_weight, n = 2**22, 8.0, 1000.0, [10, 30]
    changes = [encode_change(A, G), encode_change(B, G)]
    ratios = [round(k / max_weight * levels) for k in n]
    sent = [quantize([c * (q / levels) for c in change], r, levels)
            for change, q in zip(changes, ratios, strict=True)]
    total = [sum(s[i].astype(np.int64) for s in sent) for i in range(len(G))]
    mean = [(d - (len(n) - 1) * r) * levels / sum(ratios) for d in dequantize(total, r, levels)]
    model = apply_change(G, mean)
    plain = (10 * A[0].astype(np.float64) + 30 * B[0]) / 40
    step = len(n) * (2 * r / levels) / (sum(n) / max_weight)  # stochastic rounding, at most
    assert np.max(np.abs(model[0] - plain)) <= step
    assert int(model[1]) == round((10 * 110 + 30 * 121) / 40)  # 118.25 -> 118


def test_coordinates_beyond_the_range_are_counted():
    assert beyond_range([np.array([0.5, -9.0, 9.0]), np.array([8.0])], 8.0) == 2


def test_the_adapter_adds_the_unmasked_mean_change_to_the_global_model():
    core = SpyCore(initial_weights=G)
    strategy = SecureStrategy(core, clipping_range=8.0)
    mean = [(10 * c_a + 30 * c_b) / 40 for c_a, c_b in
            zip(encode_change(A, G), encode_change(B, G), strict=True)]
    # SecAgg+ hands the strategy every client's FitRes with the same unmasked sum in it
    results = [(Proxy("node-1"), fit_res(mean, 10, cid="a", train_loss=1.0)),
               (Proxy("node-2"), fit_res(mean, 30, cid="b", train_loss=2.0))]
    params, metrics = strategy.aggregate_fit(1, results, [])
    model = arrays_of(params)
    assert model[0] == pytest.approx([(10 * 0.75 + 30 * 0.25) / 40, (10 * -1.5) / 40])
    assert int(model[1]) == 118
    row = core.history[-1]
    assert row.coefficients == {"a": 0.25, "b": 0.75}  # the weights SecAgg+ applied
    assert metrics["train_loss"] == pytest.approx(1.75)


def test_fit_instructions_carry_the_clipping_range(monkeypatch):
    from flwr.server.client_manager import SimpleClientManager

    manager = SimpleClientManager()
    for k in range(2):
        manager.register(Proxy(f"node-{k}"))
    strategy = SecureStrategy(SpyCore(initial_weights=G), clipping_range=4.0,
                              min_available_clients=2, min_fit_clients=2)
    instructions = strategy.configure_fit(1, ndarrays_to_parameters(G), manager)
    assert len(instructions) == 2
    assert all(ins.config["secagg-clipping-range"] == 4.0 for _, ins in instructions)


def test_secagg_messages_are_told_from_the_apps_own():
    legacy = RecordDict({"fitins.parameters": ArrayRecord(), "fitins.config": ConfigRecord()})
    stage = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({"stage": "setup"})})
    own = RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord()})
    assert is_secure_message(legacy) and is_secure_message(stage)
    assert not is_secure_message(own)


GOOD = ServerSettings(test_path="temp_dataset/test.tsv", tokenizer_path="temp_dataset/train.tsv",
                      secure_aggregation=True)


def test_secure_aggregation_defaults_pass():
    check_server(GOOD)
    check_server(GOOD.replace(clients_per_round=20, min_fit_clients=1))


@pytest.mark.parametrize("changes, words", [
    ({"weight_strategy": "wer"}, "weight-strategy wer cannot be combined"),
    ({"aggregation": "median"}, "aggregation median cannot"),
    ({"robust": True, "score_path": "temp_dataset/dev.tsv"}, "cannot be combined"),
    ({"clip_update_norm": "auto"}, "clip-update-norm cannot"),
    ({"max_client_share": 0.5}, "max-client-share cannot"),
    ({"max_examples": 10}, "max-examples cannot"),
    ({"score_path": "temp_dataset/dev.tsv"}, "score-path cannot"),
    ({"dp_noise_multiplier": 1.0, "dp_clip_norm": "1"}, "dp-noise-multiplier cannot"),
    ({"min_available_clients": 1, "min_fit_clients": 1}, "at least 2 clients"),
    ({"secagg_clipping_range": 0.0}, "secagg-clipping-range must be positive"),
    ({"secagg_num_shares": 3.0, "secagg_reconstruction_threshold": 4.0}, "exceeds"),
])
def test_what_secure_aggregation_rules_out_is_refused_in_one_line(changes, words):
    with pytest.raises(UsageError, match=words) as err:
        check_server(GOOD.replace(**changes))
    assert "\n" not in str(err.value)


def test_run_config_turns_it_on():
    s = ServerSettings.from_run_config({"secure-aggregation": True,
                                        "secagg-clipping-range": 4.0})
    assert s.secure_aggregation and s.secagg_clipping_range == 4.0
    assert not ServerSettings().secure_aggregation  # the default stays the tutorial's


class Trainer:
    """A trainer whose local training returns fixed weights (the client's own logic is tested)."""

    cid, tokenizer_sha256 = "7", "abc"

    def __init__(self, trained):
        self.trained = trained

    def check_tokenizer(self, sha):
        pass

    def fit(self, parameters, rnd, epochs):
        return self.trained, 12, {"train_loss": 0.5}


def test_a_secure_client_sends_its_change_and_refuses_to_send_nan():
    from fedspeech.transports.secure_app import SecureClient

    config = {"server-round": 1, "epochs": 1, "tokenizer-sha256": "abc",
              "secagg-clipping-range": 8.0}
    change, n, metrics = SecureClient(Trainer(A)).fit(G, config)
    assert change[0].tolist() == [0.25, -0.5] and n == 12 and metrics["cid"] == "7"
    broken = [np.array([np.nan, 0.0], np.float32), A[1]]
    with pytest.raises(ValueError, match="client 7: its change has NaN or Inf"):
        SecureClient(Trainer(broken)).fit(G, config)
