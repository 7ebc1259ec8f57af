"""What the server does not take on a client's word: the defences through the round core
(in-process, against numbers worked out by hand), the attacks' arithmetic, the --robust preset,
and one real lying client process out-weighed under --robust."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from conftest import (
    ROOT,
    client_cmd,
    free_port,
    kill,
    make_small_data,
    server_cmd,
    spawn,
    wait_listening,
)

from fedspeech.base.errors import UsageError
from fedspeech.core.defences import Defences
from fedspeech.core.round import RoundCore, Update
from fedspeech.core.settings import ServerSettings, check_server
from fedspeech.math.robust import change_norm
from fedspeech.tools.attacks import SCALE, attack

GLOBAL = [np.zeros(2, np.float32), np.array(0, np.int64)]


def upd(name, x, y, n=10, **metrics):
    arrays = [np.array([x, y], np.float32), np.array(n, np.int64)]
    return Update(client=name, node=f"node-{name}", num_examples=n,
                  metrics={"train_loss": 1.0, "valid_wer": 50.0, **metrics},
                  decode=lambda: arrays)


def core(**kwargs) -> RoundCore:
    return RoundCore(initial_weights=GLOBAL, **kwargs)


def test_auto_clip_bounds_the_large_change_to_the_rounds_median():
    c = core(defences=Defences(clip_update_norm="auto"))
    # changes of norm 5, 10 and 100: the median is 10, so only c is clipped (to norm 10)
    out = c.aggregate(1, [upd("a", 3, 4), upd("b", 6, 8), upd("c", 60, 80)])
    row = c.history[-1]
    assert row.update_norms == {"a": 5.0, "b": 10.0, "c": 100.0}
    assert row.clip_norm == 10.0 and row.clipped == ["c"]
    assert out[0].tolist() == pytest.approx([(3 + 6 + 6) / 3, (4 + 8 + 8) / 3])


def test_fixed_clip_streams_and_records_every_norm():
    c = core(defences=Defences(clip_update_norm=5.0))
    out = c.aggregate(1, [upd("a", 3, 4), upd("b", 0, 20)])
    assert c.history[-1].clipped == ["b"] and c.history[-1].update_norms["b"] == 20.0
    assert out[0].tolist() == pytest.approx([1.5, 4.5])  # b counts as (0, 5)


def test_server_measured_loss_weights_and_names_a_lying_claim(caplog):
    measured = {3.0: (1.0, 40.0), 6.0: (1.0, 42.0), 60.0: (5.0, 100.0)}  # by the first value
    c = core(weight_strategy="server_loss", score=lambda arrays: measured[float(arrays[0][0])],
             defences=Defences(claim_margin=15.0))
    with caplog.at_level(logging.WARNING, logger="round"):
        c.aggregate(1, [upd("a", 3, 4), upd("b", 6, 8), upd("c", 60, 80, valid_wer=0.0)])
    row = c.history[-1]
    e4 = math.exp(-4)  # softmax(-[1, 1, 5]): 1 : 1 : e^-4
    assert row.coefficients["c"] == pytest.approx(e4 / (2 + e4))
    assert row.claims["c"] == {"claimed_wer": 0.0, "measured_wer": 100.0, "measured_loss": 5.0,
                               "num_examples": 10}
    assert row.score_seconds >= 0
    named = [r.getMessage() for r in caplog.records if "claims a validation WER" in r.message]
    assert named == ["round 1: client c claims a validation WER of 0.0 %; the server measures "
                     "100.0 % on its scoring set"]


def test_an_update_whose_measured_loss_is_not_finite_is_refused():
    # SpeechBrain skips a NaN batch loss in its average: a model that is NaN everywhere would
    # read as loss 0, the best of all (the Brain reports it as inf instead)
    measured = {3.0: (1.0, 40.0), 6.0: (1.2, 42.0), 60.0: (math.inf, 100.0)}
    c = core(weight_strategy="server_loss", score=lambda arrays: measured[float(arrays[0][0])])
    c.aggregate(1, [upd("a", 3, 4), upd("b", 6, 8), upd("c", 60, 80)])
    row = c.history[-1]
    assert row.rejected == {"c": "its model's loss on the server's scoring set is not finite"}
    assert set(row.coefficients) == {"a", "b"} and row.claims["c"]["measured_loss"] is None


def test_server_weighting_without_a_scoring_set_is_refused():
    with pytest.raises(ValueError, match="needs a scoring set"):
        core(weight_strategy="server_wer")


def test_share_cap_and_example_cap_bound_an_inflated_count():
    c = core(defences=Defences(max_examples=100, max_client_share=0.5))
    c.aggregate(1, [upd("a", 1, 1, n=50), upd("b", 1, 1, n=50), upd("c", 9, 9, n=10_000)])
    row = c.history[-1]
    # c claims 10000, counts 100: 50/200, 50/200, 100/200 -> within the cap of 0.5
    assert row.coefficients == pytest.approx({"a": 0.25, "b": 0.25, "c": 0.5})
    assert row.capped == {"c": "examples 10000 -> 100"}
    c = core(defences=Defences(max_client_share=0.5))
    c.aggregate(1, [upd("a", 1, 1, n=50), upd("b", 1, 1, n=50), upd("c", 9, 9, n=10_000)])
    assert c.history[-1].coefficients["c"] == pytest.approx(0.5)
    assert set(c.history[-1].capped) == {"c"}


def test_median_through_the_core_ignores_the_liar_and_its_claims():
    c = core(defences=Defences(aggregation="median"))
    out = c.aggregate(1, [upd("a", 1, 2), upd("b", 2, 3), upd("c", 1000, -1000, n=10**6)])
    assert out[0].tolist() == [2.0, 2.0] and c.history[-1].aggregation == "median"


def test_krum_records_the_update_it_kept():
    c = core(defences=Defences(aggregation="krum", num_malicious=1))
    ups = [upd("a", 1, 2), upd("b", 2, 3), upd("c", 3, 1), upd("d", 2, 2.4),
           upd("e", 1000, -1000)]
    c.aggregate(1, ups)
    assert c.history[-1].selected and "e" not in c.history[-1].selected


def test_one_client_and_identical_clients_pass_every_defence_unchanged():
    full = Defences(clip_update_norm="auto", max_client_share=1.0, aggregation="median")
    assert core(defences=full).aggregate(1, [upd("a", 3, 4)])[0].tolist() == [3, 4]
    same = [upd(k, 3, 4) for k in "abc"]
    c = core(defences=Defences(clip_update_norm="auto", aggregation="median"))
    assert c.aggregate(1, same)[0].tolist() == [3, 4] and c.history[-1].clipped is None


def test_a_nan_update_is_refused_before_any_defence_sees_it():
    c = core(defences=Defences(clip_update_norm="auto", aggregation="median"))
    c.aggregate(1, [upd("a", 3, 4), upd("b", math.nan, 4), upd("c", 6, 8)])
    row = c.history[-1]
    assert row.rejected == {"b": "array 0 contains NaN or Inf"}
    assert set(row.update_norms) == {"a", "c"}


# ---- the attacks' arithmetic --------------------------------------------------------------------
G = [np.array([1.0, 1.0], np.float32), np.array(3, np.int64)]
U = [np.array([2.0, 3.0], np.float32), np.array(4, np.int64)]  # honest change (1, 2)


@pytest.mark.parametrize(("name", "expected"), [
    ("scaled", [1 - SCALE * 1, 1 - SCALE * 2]), ("sign_flip", [0.0, -1.0]),
    ("honest", [2.0, 3.0]), ("inflated_count", [1 - SCALE, 1 - 2 * SCALE]),
])
def test_attack_updates(name, expected):
    arrays, samples, metrics = attack(name, G, U, 10, {"valid_wer": 30.0})
    assert arrays[0].tolist() == pytest.approx(expected) and arrays[1].tolist() == 4
    assert samples == (10_000 if name == "inflated_count" else 10)


def test_random_attack_keeps_the_honest_norm_and_claimed_wer0_lies_about_wer():
    arrays, _, _ = attack("random", G, U, 10, {}, seed=3)
    assert change_norm(arrays, G) == pytest.approx(math.sqrt(5), rel=1e-5)
    _, _, metrics = attack("claimed_wer0", G, U, 10, {"valid_wer": 30.0})
    assert metrics["valid_wer"] == 0.0


def test_robust_preset_turns_claims_into_measurements():
    s = ServerSettings(robust=True).with_preset()
    assert (s.weight_strategy, s.clip_update_norm, s.max_client_share) == ("server_loss", "auto",
                                                                          0.5)
    assert ServerSettings(robust=True, weight_strategy="wer").with_preset().weight_strategy \
        == "server_wer"
    assert ServerSettings(robust=True, max_client_share=0.4).with_preset().max_client_share == 0.4


# ---- a real lying process ---------------------------------------------------------------------
@pytest.mark.slow
def test_real_lying_client_is_out_weighed_under_robust(tmp_path):
    """server.py --robust, two honest client.py processes and one attacker that sends
    ``g + 20 (g - u)`` and claims 1000x its sample count: it is clipped, measured, and gets
    next to no weight; the claims are in the history."""
    data = make_small_data(tmp_path / "data", per_client=40, clients=3)
    save, port = tmp_path / "run", free_port()
    server = spawn(server_cmd(data, save, port, "--robust", "--score_path",
                              str(data / "dev.tsv"), "--fraction_evaluate", "0",
                              "--local_epochs", "2", clients=3, rounds=1),
                   tmp_path / "server.log")
    procs = [server]
    try:
        wait_listening(port, server)
        for k in (0, 1):
            procs.append(spawn(client_cmd(data, save, port, k), tmp_path / f"client_{k}.log"))
        liar = client_cmd(data, save, port, 2)
        liar[1:2] = ["-m", "fedspeech.tools.attacks", "--attack", "inflated_count"]
        procs.append(spawn(liar, tmp_path / "client_2.log"))
        assert server.wait(timeout=400) == 0, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        kill(*procs)
    (row,) = json.loads((save / "history.json").read_text())
    assert row["weight_strategy"] == "server_loss" and row["clipped"] == ["2"]
    assert row["coefficients"]["2"] < 0.01
    assert row["claims"]["2"]["num_examples"] >= 1000 * row["claims"]["0"]["num_examples"]
    assert row["claims"]["2"]["measured_loss"] > 2 * row["claims"]["0"]["measured_loss"]
    assert "attack inflated_count" in (tmp_path / "client_2.log").read_text()


def test_robust_needs_a_scoring_set(tmp_path):
    s = ServerSettings(robust=True, data_path=str(ROOT / "temp_dataset"), save_path=str(tmp_path),
                       test_path=str(ROOT / "temp_dataset" / "test.tsv"))
    with pytest.raises(UsageError) as err:
        check_server(s)
    assert str(err.value) == ("--weight_strategy server_loss needs --score_path (the server's "
                              "own scoring set) (--robust uses it)")
    check_server(s.replace(score_path=str(ROOT / "temp_dataset" / "dev.tsv")))


# ---- scripts/attack_eval.py: its table (the runs themselves are the bench's) --------------------
def bench_run(attack, defence, seed, wer, coef=0.3):
    return {"attack": attack, "defence": defence, "seed": seed, "test_wer": wer,
            "unseen_wer": wer, "attacker_coefficient": coef, "weights_attacker": True,
            "claim_gap": None, "clipped_rounds": 0, "seconds": 1.0}


def test_the_bench_leaves_out_a_seed_that_never_learnt_and_checks_the_target():
    from fedspeech.tools.attack_eval import summary

    results = [bench_run("honest", "none", 1, 2.0), bench_run("honest", "none", 2, 4.0),
               bench_run("honest", "none", 3, 99.0),  # seed 3 did not learn at all
               bench_run("honest", "robust", 1, 1.0), bench_run("honest", "robust", 2, 9.0),
               bench_run("honest", "robust", 3, 100.0),
               bench_run("scaled", "robust", 1, 7.0), bench_run("scaled", "robust", 2, 11.0),
               bench_run("scaled", "robust", 3, 100.0)]
    table = summary(results, 7, 2, [1, 2, 3])
    assert "seeds 1, 2 (" in table and "| honest | 3.00 (0.300) n=2 | 5.00 (0.300) n=2 |" in table
    assert "honest +2.00 (within 3), scaled +6.00 (**over** 5)" in table
    assert "Left out of the means: seed(s) 3 (the honest run without defence ended at 99" in table
