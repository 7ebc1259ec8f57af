"""User-level DP-FedAvg: the mechanism checked in-process (clipping, the noise's calibration, the
clients a round sampled), the accounting against Flower's own accountant, the budget, the refused
combinations, and one short private run on the Simulation Engine."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from fedspeech.base.errors import UsageError
from fedspeech.core.private import Privacy, PrivateRound
from fedspeech.core.round import RoundCore, Update
from fedspeech.core.row import RoundRow
from fedspeech.core.settings import ServerSettings, check_server
from fedspeech.math.privacy import Accountant, add_noise, effective_noise_multiplier

SIZE = 200_000
G = [np.zeros(SIZE, np.float32), np.array(5, np.int64)]


def upd(name, value, n=10):
    arrays = [np.full(SIZE, value, np.float32), np.array(7, np.int64)]
    return Update(client=name, node=name, num_examples=n, metrics={}, decode=lambda: arrays)


def private_core(sigma=1.0, clip=1.0, population=10, **kwargs) -> RoundCore:
    privacy = Privacy(noise_multiplier=sigma, clip_norm=clip, population=population, seed=3,
                      **kwargs)
    return RoundCore(initial_weights=G, privacy=privacy)


def test_changes_are_clipped_to_c_and_the_noise_is_sigma_c_over_the_sampled():
    # four sampled, three answer; every change has norm 0.01 * sqrt(SIZE) = 4.47 > C = 2
    core = private_core(sigma=1.5, clip=2.0)
    out = core.aggregate(1, [upd(k, 0.01) for k in "abc"], failed=["d"], sampled=4)
    row = core.history[-1]
    clipped_value = 0.01 * 2.0 / (0.01 * math.sqrt(SIZE))  # each element after clipping to C
    expected_mean = clipped_value * 3 / 4  # the dropped client adds a zero change
    residual = out[0].astype(np.float64) - expected_mean
    assert residual.mean() == pytest.approx(0.0, abs=4 * 1.5 * 2.0 / 4 / math.sqrt(SIZE))
    assert residual.std() == pytest.approx(1.5 * 2.0 / 4, rel=0.01)  # sigma * C / m, m = 4
    assert row.dp_noise_std == pytest.approx(0.75) and row.dp_sampled == 4
    assert row.clipped == ["a", "b", "c"] and row.update_norms["a"] == pytest.approx(4.472, 1e-3)
    assert set(row.coefficients.values()) == {0.25}  # every sampled client weighs 1/m
    assert out[1].tolist() == 7  # counters are the clients', not noised


def test_a_small_change_is_not_clipped_and_noise_is_only_on_floats():
    core = private_core(sigma=1e-6, clip=10.0)
    out = core.aggregate(1, [upd("a", 0.001), upd("b", 0.003)], sampled=2)
    assert out[0].mean() == pytest.approx(0.002, rel=1e-3) and core.history[-1].clipped == []
    noisy = add_noise([np.zeros(3, np.float32), np.array([1, 2], np.int64)], 1.0,
                      np.random.default_rng(0))
    assert noisy[1].tolist() == [1, 2]


def test_epsilon_in_every_row_equals_flowers_accountant():
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    core = private_core(sigma=1.1, clip=1.0, population=100, sampled_all=False)
    flower = RdpAccountant(PrivacyConfig(
        target_delta=0.01, population_size=100,
        neighboring_relation=NeighboringRelation.REPLACE_ONE,
        sampling_method=SamplingMethod.WITHOUT_REPLACEMENT))
    for rnd in (1, 2, 3):
        core.aggregate(rnd, [upd(k, 0.001) for k in "abcde"], sampled=5)
        flower.compose(GaussianPrivacyEvent(noise_multiplier=1.1, sample_size=5,
                                            population_size=100))
        row = core.history[-1]
        assert row.dp_epsilon == pytest.approx(flower.get_epsilon(0.01))
        assert row.dp_delta == 0.01 and row.dp_sampling == "without-replacement of 100"
    assert 0 < core.history[0].dp_epsilon < core.history[-1].dp_epsilon


def test_a_round_that_would_pass_the_budget_is_not_started_and_the_run_stops():
    core = private_core(sigma=0.8, clip=1.0, max_epsilon=10.0)
    spent = []
    rnd = 1
    while core.allows(rnd, 3):
        core.aggregate(rnd, [upd(k, 0.001) for k in "abc"], sampled=3)
        spent.append(core.history[-1].dp_epsilon)
        rnd += 1
    assert spent and spent[-1] <= 10.0 and core.stopped
    assert core.aggregate(rnd, [upd("a", 0.001)]) is None and core.evaluate(rnd) is None
    assert len(core.history) == len(spent)
    # a resumed run spends what its rounds spent, and stops at the same round
    again = PrivateRound(core.private.privacy, core.history)
    assert again.accountant.epsilon == pytest.approx(spent[-1])
    assert not again.allows(rnd, 3)


def test_adaptive_clipping_moves_towards_the_median_norm():
    core = private_core(sigma=0.5, clip="adaptive", initial_clip_norm=1.0, population=40)
    norms = [0.02 * math.sqrt(SIZE)] * 40  # every change far above C = 1: C grows
    core.aggregate(1, [upd(str(k), 0.02) for k in range(40)], sampled=40)
    row = core.history[-1]
    assert row.clip_norm == 1.0 and min(norms) > 1.0
    assert row.dp_next_clip_norm == pytest.approx(math.exp(0.2 * (0.5 - row.dp_unclipped_fraction)))
    assert row.dp_next_clip_norm > 1.0
    # the count's release costs privacy: the update's effective multiplier is above sigma
    assert row.dp_noise_multiplier == pytest.approx(effective_noise_multiplier(0.5, 2.0))
    assert row.dp_noise_multiplier > 0.5


def test_accountant_without_sampling_amplification_for_full_participation():
    acc = Accountant(population=3, delta=1 / 3, max_epsilon=None, sampled_all=True)
    assert acc.sampling == "no-amplification" and acc.relation == "add-or-remove-one"
    assert acc.spend(1.0, 3) > 0


@pytest.mark.parametrize(("changes", "message"), [
    ({"dp_clip_norm": "1"}, "--dp_clip_norm needs --dp_noise_multiplier"),
    ({"dp_noise_multiplier": 1.0}, "--dp_noise_multiplier needs --dp_clip_norm C|adaptive"),
    ({"dp_noise_multiplier": 1.0, "dp_clip_norm": "x"}, "expected a positive number or adaptive"),
    ({"dp_noise_multiplier": 1.0, "dp_clip_norm": "adaptive"},
     "needs more than 10 clients a round"),
    ({"dp_noise_multiplier": 1.0, "dp_clip_norm": "1", "weight_strategy": "wer"},
     "--weight_strategy wer cannot be combined with --dp_noise_multiplier"),
    ({"dp_noise_multiplier": 1.0, "dp_clip_norm": "1", "aggregation": "median"},
     "--aggregation median cannot be combined"),
    ({"dp_noise_multiplier": 1.0, "dp_clip_norm": "1", "dp_population": 1},
     "--dp_population 1 is smaller than the 2 clients"),
])
def test_unsound_combinations_are_refused_in_one_line(tmp_path, changes, message):
    good = ServerSettings(test_path=str(ROOT / "temp_dataset" / "test.tsv"),
                          data_path=str(ROOT / "temp_dataset"), save_path=str(tmp_path))
    with pytest.raises(UsageError, match=message):
        check_server(good.replace(**changes))


def test_rows_carry_the_privacy_fields_in_json():
    row = RoundRow(1, dp_epsilon=2.5, dp_delta=0.1, dp_sampling="no-amplification of 3")
    assert RoundRow.from_dict(row.to_dict()) == row


@pytest.mark.slow
def test_private_run_on_the_simulation_engine(small_data, tmp_path):
    """Four virtual clients, two a round, one round with DP: the row has its epsilon."""
    save = tmp_path / "sim"
    cmd = [sys.executable, "scripts/flower_run.py", "simulate", "--save_path", str(save),
           "--rounds", "1", "--num_clients", "4", "--clients_per_round", "2",
           "--data_path", str(small_data), "--dev_path", str(small_data / "dev.tsv"),
           "--test_path", str(small_data / "test.tsv"), "--tr_add_path", "",
           "--tokenizer_path", str(small_data / "train.tsv"), "--partition_by", "iid",
           "--run_config", "dp-noise-multiplier=0.3", "--run_config", 'dp-clip-norm="0.001"',
           "--run_config", "dp-population=4", "--run_config", "fraction-evaluate=0"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = json.loads((save / "history.json").read_text())
    assert [row["round"] for row in history] == [1]
    assert history[0]["dp_epsilon"] > 0
    assert history[0]["dp_sampled"] == 2 and history[0]["dp_delta"] == 0.25
    assert history[0]["dp_sampling"] == "without-replacement of 4"
    assert set(history[0]["coefficients"].values()) == {0.5}


# ---- scripts/privacy_eval.py: its arguments and its table (the runs are the bench's) -------------
def privacy_eval_args(*argv):
    from fedspeech.tools.privacy_eval import build_parser

    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv, words", [
    (["--noise", "0.1,x"], "--noise '0.1,x': expected comma-separated numbers"),
    (["--noise=-1,0"], "expected numbers >= 0"),
    (["--noise", "0.1"], "--noise without 0 needs --clip_norm"),
    (["--clients_per_round", "1"], "--clients_per_round 1: between 2"),
    (["--secagg_clients", "1"], "--secagg_clients 1"),
])
def test_privacy_eval_refuses_bad_arguments_in_one_line(argv, words):
    from fedspeech.tools.privacy_eval import check, parse_noise

    args = privacy_eval_args(*argv)
    with pytest.raises(UsageError, match=words):
        check(args, parse_noise(args.noise))


def test_privacy_eval_commands_and_table():
    from fedspeech.tools.privacy_eval import secagg_command, simulate_command
    from fedspeech.tools.privacy_report import summary

    args = privacy_eval_args("--num_clients", "2000", "--clients_per_round", "20")
    private = simulate_command(args, ROOT / "x", 0.5, 3.0)
    assert "dp-noise-multiplier=0.5" in private and 'dp-clip-norm="3"' in private
    assert "--num_clients" in private and "2000" in private and "--tr_add_path" in private
    plain = simulate_command(args, ROOT / "x", 0.0, None)
    assert not any(a.startswith("dp-") for a in plain)  # no DP: it only measures the norms
    assert "secure-aggregation=true" in secagg_command(args, ROOT / "x", True)
    assert "secure-aggregation=true" not in secagg_command(args, ROOT / "x", False)
    results = [
        {"sigma": 0.0, "clip_norm": None, "test_wer": 5.0, "unseen_wer": 9.0, "epsilon": None,
         "delta": None, "noise_std": None, "median_change_norm": 12.0, "seconds": 100.0},
        {"sigma": 1.0, "clip_norm": 12.0, "test_wer": 100.0, "unseen_wer": 100.0,
         "epsilon": 0.9, "delta": 5e-4, "noise_std": 0.6, "median_change_norm": 12.0,
         "seconds": 101.0, "big_sigma": 100.0, "big_epsilon": 0.5},
    ]
    table = summary(results, args)
    assert "| no DP | - | - | - | - | 5.00 | 9.00 | 100 | - |" in table
    assert "| 1 | 12 | 0.6 | 0.9 | 0.0005 | 100.00 | 100.00 | 101 | 100, 0.5 |" in table
    assert "median change norm of 12" in table


def test_the_extrapolation_keeps_the_noise_on_the_mean_and_asks_flowers_accountant():
    from fedspeech.math.privacy import Accountant
    from fedspeech.tools.privacy_report import extrapolated_epsilon

    sigma, epsilon = extrapolated_epsilon(0.5, cohort=10, rounds=2, big_cohort=100,
                                          population=10_000)
    assert sigma == 5.0  # sigma C / m unchanged: 0.5 / 10 = 5 / 100
    accountant = Accountant(population=10_000, delta=1e-4, max_epsilon=None, sampled_all=False)
    accountant.spend(5.0, 100)
    assert epsilon == pytest.approx(accountant.spend(5.0, 100))
