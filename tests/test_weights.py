"""Tests for weights: model <-> arrays <-> checkpoint, on real models built from every config.

Every config in ``configs/`` is built once per session (module-scoped, parametrized fixture). The
big configs (template: 46M, CRDNN: 159M parameters) are built with a cheap stand-in for
``torch.nn.init.orthogonal_`` (QR of the 1024-wide LSTM matrices takes most of the build time on
2 cores); the architecture (keys, shapes, dtypes) is exactly the config's, only initial values
differ, and these tests are about keys, shapes, dtypes and values round-tripping.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import weights
from fedspeech.speech import config as config_file

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# Configs whose normaliser keeps global statistics outside state_dict (the ones weights.py ships);
# per-speaker or per-utterance normalisation (real_cpu.yaml's norm_type: speaker) has none:
# tested on its own below.
GLOBAL_NORM = [p for p in CONFIGS if not any(
    line.split("#")[0].strip() in ("norm_type: sentence", "norm_type: speaker")
    for line in p.read_text().splitlines())]
SMALL = ROOT / "configs" / "small_cpu.yaml"
STAT_KEYS = ["normalize.glob_mean", "normalize.glob_std", "normalize.count"]


# ---- helpers -------------------------------------------------------------------------------------
def _cheap_orthogonal(tensor, gain=1.0, generator=None):
    with torch.no_grad():
        return tensor.normal_(0.0, 0.02, generator=generator)


def build(config: Path, out: Path, overrides: dict | None = None, *, norm_stats: bool = True,
          fast_init: bool = False):
    """(ModuleDict of the config's modules, hparams), as the server/clients build them."""
    with pytest.MonkeyPatch.context() as mp:
        if fast_init:
            mp.setattr(torch.nn.init, "orthogonal_", _cheap_orthogonal)
        hparams = config_file.load_hparams(config, {"output_folder": str(out), **(overrides or {})})
    modules = torch.nn.ModuleDict(hparams["modules"])
    if norm_stats:
        weights.init_norm_stats(modules, hparams["n_mels"])
    return modules, hparams


def feed_normalize(modules: torch.nn.Module, n_mels: int, seed: int = 0) -> None:
    """Populate the global normalisation statistics from a random batch (train mode)."""
    gen = torch.Generator().manual_seed(seed)
    x = 3.0 * torch.randn(2, 50, n_mels, generator=gen) + 1.5
    norm = modules["normalize"]
    norm.train()
    with torch.no_grad():
        norm(x, torch.tensor([1.0, 0.8]))


def model_arrays(modules: torch.nn.Module) -> dict[str, np.ndarray]:
    """What the model holds, read without weights.py: state_dict + the normalize attributes."""
    out = {k: v.detach().cpu().numpy() for k, v in modules.state_dict().items()}
    norm = modules["normalize"]
    out["normalize.glob_mean"] = norm.glob_mean.detach().cpu().numpy()
    out["normalize.glob_std"] = norm.glob_std.detach().cpu().numpy()
    out["normalize.count"] = np.asarray(norm.count, dtype=np.int64)
    return out


def assert_holds(modules: torch.nn.Module, keys: list[str], expected: list[np.ndarray]) -> None:
    held = model_arrays(modules)
    assert list(held) == keys
    for key, exp in zip(keys, expected, strict=True):
        got = held[key]
        assert got.dtype == exp.dtype, key
        assert got.shape == exp.shape, key
        assert np.array_equal(got, exp), key


def assert_same_arrays(got: list[np.ndarray], expected: list[np.ndarray], keys: list[str]) -> None:
    assert len(got) == len(expected) == len(keys)
    for key, g, e in zip(keys, got, expected, strict=True):
        assert isinstance(g, np.ndarray), key
        assert g.dtype == e.dtype, key
        assert g.shape == e.shape, key
        assert np.array_equal(g, e), key


def shifted(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Same keys/shapes/dtypes, every value different (float +0.5, int +3)."""
    out = [(a + 3 if np.issubdtype(a.dtype, np.integer) else a + 0.5) for a in arrays]
    return [b.astype(a.dtype, copy=False) for a, b in zip(arrays, out, strict=True)]


@dataclass
class Built:
    name: str
    modules: torch.nn.ModuleDict
    n_mels: int
    keys: list[str]       # expected keys, from state_dict (not from weights.py)
    original: list[np.ndarray]  # get_weights right after building (stats populated)
    _perturbed: list[np.ndarray] | None = None

    @property
    def perturbed(self) -> list[np.ndarray]:
        if self._perturbed is None:
            self._perturbed = shifted(self.original)
        return self._perturbed


# The ~160M-parameter configs take a minute on 2 cores: full suite only (not run_tests.sh --fast).
# one worker builds each config once for the whole module (the `built` fixture)
pytestmark = pytest.mark.xdist_group("built_models")


@pytest.fixture(scope="module", ids=[p.stem for p in GLOBAL_NORM], params=[
    p if p.stem == "small_cpu" else pytest.param(p, marks=pytest.mark.slow) for p in GLOBAL_NORM])
def built(request, tmp_path_factory) -> Built:
    config: Path = request.param
    modules, hparams = build(config, tmp_path_factory.mktemp(config.stem),
                             fast_init=config.stem != "small_cpu")
    feed_normalize(modules, hparams["n_mels"])
    keys = list(modules.state_dict().keys()) + STAT_KEYS
    return Built(config.stem, modules, hparams["n_mels"], keys, weights.get_weights(modules))


def test_configs_found():
    assert SMALL in CONFIGS and len(CONFIGS) >= 3


@pytest.mark.parametrize("norm_type", ["speaker", "sentence"])
def test_local_normalisation_ships_no_statistics(tmp_path, norm_type):
    """With ``norm_type: speaker`` or ``sentence`` nothing is outside state_dict: the weights are
    it (a site's speaker means stay with it)."""
    config = ROOT / "configs" / "real_cpu.yaml"
    modules, _ = build(config, tmp_path / "real", {"norm_type": norm_type}, norm_stats=False)
    keys = weights.weight_keys(modules)
    assert keys == list(modules.state_dict().keys())
    arrays = weights.get_weights(modules)
    shifted = [a + np.float32(0.25) if a.dtype == np.float32 else a for a in arrays]
    weights.set_weights(shifted, modules)
    assert all(np.array_equal(a, b) for a, b in
               zip(weights.get_weights(modules), shifted, strict=True))


# ---- arrays: order, dtypes, round trip -----------------------------------------------------------
def test_weight_keys_match_get_weights(built: Built):
    keys = weights.weight_keys(built.modules)
    assert keys == built.keys  # state_dict keys in order, then the three statistics
    assert len(built.original) == len(keys)
    held = model_arrays(built.modules)
    for key, array in zip(keys, built.original, strict=True):
        assert array.shape == held[key].shape, key
    assert built.original[-1].shape == ()
    assert built.original[-3].shape == (built.n_mels,)
    assert built.original[-2].shape == (built.n_mels,)
    # the statistics are real ones from a batch, not the init_norm_stats placeholders
    assert int(built.original[-1]) == 90  # 50 + 40 valid frames (lengths 1.0 and 0.8 of 50)
    assert not np.allclose(built.original[-3], 0.0)


def test_integer_dtypes_kept(built: Built):
    state = built.modules.state_dict()
    int_keys = {k for k, v in state.items() if v.dtype == torch.int64} | {"normalize.count"}
    got_int = {k for k, a in zip(built.keys, built.original, strict=True) if a.dtype == np.int64}
    assert got_int == int_keys
    assert any(k.endswith("num_batches_tracked") for k in int_keys)  # every config has BatchNorm
    for key, array in zip(built.keys, built.original, strict=True):
        if key in int_keys:
            assert array.dtype == np.int64, key
        else:
            assert array.dtype == np.float32, key  # nothing promoted to float64
    assert isinstance(built.modules["normalize"].count, int)


def test_round_trip_bit_exact(built: Built):
    perturbed = built.perturbed
    weights.set_weights(perturbed, built.modules)
    assert_holds(built.modules, built.keys, perturbed)
    norm = built.modules["normalize"]
    assert np.array_equal(norm.glob_mean.numpy(), built.original[-3] + np.float32(0.5))
    assert norm.count == int(built.original[-1]) + 3
    assert isinstance(norm.count, int)

    weights.set_weights(built.original, built.modules)
    assert_same_arrays(weights.get_weights(built.modules), built.original, built.keys)
    assert np.array_equal(norm.glob_mean.numpy(), built.original[-3])
    assert np.array_equal(norm.glob_std.numpy(), built.original[-2])
    assert norm.count == 90


@pytest.mark.parametrize("case", ["count", "shape", "float64", "count_as_float32",
                                  "num_batches_tracked_as_float32", "two_bad"])
def test_mismatch_is_value_error_and_nothing_loaded(built: Built, case: str):
    keys = built.keys
    bad = list(built.perturbed)  # every entry differs from the model: half-loading would show
    bn = next(i for i, k in enumerate(keys) if k.endswith("num_batches_tracked"))
    last_float = len(keys) - 4  # the last state_dict entry before the statistics
    while bad[last_float].dtype != np.float32:
        last_float -= 1
    if case == "count":
        del bad[-1]
        expected = [f"expected {len(keys)} weight arrays, got {len(keys) - 1}"]
    elif case == "shape":
        bad[last_float] = bad[last_float].reshape(-1)[:-1]
        expected = [f"'{keys[last_float]}'", "shape"]
    elif case == "float64":
        bad[last_float] = bad[last_float].astype(np.float64)
        expected = [f"'{keys[last_float]}'", "float32", "float64"]
    elif case == "count_as_float32":
        bad[-1] = bad[-1].astype(np.float32)
        expected = ["'normalize.count'", "int64", "float32"]
    elif case == "num_batches_tracked_as_float32":
        bad[bn] = bad[bn].astype(np.float32)
        expected = [f"'{keys[bn]}'", "int64", "float32"]
    else:  # two bad arrays: the first one is named, not the second
        bad[bn] = bad[bn].astype(np.float32)
        bad[-1] = bad[-1].astype(np.float32)
        expected = [f"'{keys[bn]}'"]
    with pytest.raises(ValueError) as err:
        weights.set_weights(bad, built.modules)
    for fragment in expected:
        assert fragment in str(err.value)
    if case == "two_bad":
        assert "normalize.count" not in str(err.value)
    assert_holds(built.modules, built.keys, built.original)


# ---- small_cpu only: aliasing, checkpoints, init_norm_stats --------------------------------------
@pytest.fixture
def small(tmp_path):
    modules, hparams = build(SMALL, tmp_path / "out")
    feed_normalize(modules, hparams["n_mels"], seed=1)
    return modules


@pytest.fixture
def fresh(tmp_path):
    modules, _ = build(SMALL, tmp_path / "fresh", {"seed": 7})
    return modules


def test_small_seed_models_differ(small, fresh):
    a, b = weights.get_weights(small), weights.get_weights(fresh)
    assert not np.array_equal(a[0], b[0])
    assert not np.array_equal(a[-3], b[-3])  # fed vs placeholder statistics
    assert int(b[-1]) == 0 and np.array_equal(b[-3], np.zeros(40, np.float32))


def test_set_weights_from_other_model_and_no_aliasing(small, fresh):
    source = weights.get_weights(small)
    keys = weights.weight_keys(small)
    expected = [a.copy() for a in source]
    weights.set_weights(source, fresh)
    assert_same_arrays(weights.get_weights(fresh), expected, keys)
    assert fresh["normalize"].count == 90 and isinstance(fresh["normalize"].count, int)
    # the model owns copies: changing the arrays afterwards changes nothing
    for a in source:
        a += 1
    assert_holds(fresh, keys, expected)
    # get_weights returns copies: changing them leaves the model alone
    got = weights.get_weights(fresh)
    for a in got:
        a += 1
    assert_holds(fresh, keys, expected)


def test_move_modules_moves_the_statistics_too(small):
    # Module.to leaves plain-attribute statistics behind: a model built for a GPU then failed its
    # first forward pass (cuda weights, CPU statistics). "meta" stands in for the other device.
    small.to("meta")
    assert small["normalize"].glob_mean.device.type == "cpu"  # what Module.to alone does

    weights.move_modules(small, "meta")

    assert all(p.device.type == "meta" for p in small.parameters())
    assert {small["normalize"].glob_mean.device.type, small["normalize"].glob_std.device.type} == {
        "meta"}
    assert small["normalize"].glob_mean.shape == (40,) and small["normalize"].count == 90


def test_checkpoint_round_trip(small, fresh, tmp_path):
    path = tmp_path / "ckpt" / "x.ckpt"
    weights.save_checkpoint(weights.model_state_dict(small), path)
    assert sorted(os.listdir(path.parent)) == ["x.ckpt"]  # no temp file left

    before = weights.get_weights(fresh)
    assert not np.array_equal(before[0], weights.get_weights(small)[0])
    weights.load_model_file(fresh, path)
    assert_same_arrays(weights.get_weights(fresh), weights.get_weights(small),
                       weights.weight_keys(small))
    assert fresh["normalize"].count == 90

    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, dict)
    assert list(raw) == weights.weight_keys(small)
    assert all(isinstance(v, torch.Tensor) for v in raw.values())
    assert raw["normalize.count"].dtype == torch.int64
    assert raw["normalize.count"].item() == 90


class _Payload:
    """Unpickling this creates the marker file (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_load_checkpoint_refuses_pickled_code(tmp_path, writer):
    def write(path: Path, marker: Path):
        payload = {"enc.weight": torch.zeros(2), "evil": _Payload(marker)}
        if writer == "pickle":
            path.write_bytes(pickle.dumps(payload, protocol=2))
        else:
            torch.save(payload, path)

    # the payload really runs under an unsafe load (so the check below can fail)
    canary, canary_marker = tmp_path / "canary.ckpt", tmp_path / "canary-pwned"
    write(canary, canary_marker)
    if writer == "pickle":
        pickle.loads(canary.read_bytes())
    else:
        torch.load(canary, weights_only=False)
    assert canary_marker.exists()

    path, marker = tmp_path / "evil.ckpt", tmp_path / "pwned"
    write(path, marker)
    with pytest.raises(ValueError) as err:
        weights.load_checkpoint(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_load_checkpoint_missing_file(tmp_path, small):
    path = tmp_path / "nope.ckpt"
    with pytest.raises(ValueError, match="nope.ckpt"):
        weights.load_checkpoint(path)
    with pytest.raises(ValueError, match="nope.ckpt"):
        weights.load_model_file(small, path)


def test_load_checkpoint_truncated(tmp_path, small):
    good = tmp_path / "good.ckpt"
    weights.save_checkpoint(weights.model_state_dict(small), good)
    data = good.read_bytes()
    path = tmp_path / "half.ckpt"
    path.write_bytes(data[: len(data) // 2])
    before = weights.get_weights(small)
    with pytest.raises(ValueError) as err:
        weights.load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError) as err:
        weights.load_model_file(small, path)
    assert str(path) in str(err.value)
    assert_holds(small, weights.weight_keys(small), before)


def test_load_checkpoint_not_a_state_dict(tmp_path):
    path = tmp_path / "list.ckpt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="list.ckpt"):
        weights.load_checkpoint(path)


def test_load_checkpoint_of_other_architecture(tmp_path, small):
    path = tmp_path / "small.ckpt"
    weights.save_checkpoint(weights.model_state_dict(small), path)
    other, _ = build(SMALL, tmp_path / "other", {"output_neurons": 40})
    keys = weights.weight_keys(other)
    before = weights.get_weights(other)
    with pytest.raises(ValueError) as err:
        weights.load_model_file(other, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "'ctc_lin.w.weight'" in msg and "(40, 128)" in msg and "(32, 128)" in msg
    assert_holds(other, keys, before)  # nothing half-loaded


def test_load_model_state_dict_missing_and_unexpected_keys(small):
    state = weights.model_state_dict(small)
    del state["normalize.count"]
    with pytest.raises(ValueError, match="'normalize.count'"):
        weights.load_model_state_dict(small, state)
    state = weights.model_state_dict(small)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="'extra.weight'"):
        weights.load_model_state_dict(small, state)


def test_save_checkpoint_is_atomic(tmp_path, small, fresh, monkeypatch):
    path = tmp_path / "ck" / "x.ckpt"
    weights.save_checkpoint(weights.model_state_dict(small), path)
    old_bytes = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(weights.WeightsError, match="No space left"):
        weights.save_checkpoint(weights.model_state_dict(fresh), path)
    monkeypatch.undo()

    assert path.read_bytes() == old_bytes
    assert sorted(os.listdir(path.parent)) == ["x.ckpt"]  # no temp file left
    state = weights.load_checkpoint(path)
    assert state["normalize.count"].item() == 90


def test_fresh_model_eval_forward_needs_init_norm_stats(tmp_path):
    x = torch.randn(2, 50, 40, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([1.0, 0.8])

    modules, hparams = build(SMALL, tmp_path / "a")
    assert hparams["n_mels"] == 40
    norm = modules["normalize"]
    norm.eval()
    with torch.no_grad():
        out = norm(x, lengths)
    assert out.shape == x.shape
    assert torch.allclose(out, x)  # mean 0, std 1
    assert norm.count == 0  # eval mode did not update

    bare, _ = build(SMALL, tmp_path / "b", norm_stats=False)
    bare["normalize"].eval()
    with pytest.raises(RuntimeError):  # why init_norm_stats exists
        bare["normalize"](x, lengths)


def test_init_norm_stats_first_batch_reinitialises_and_keeps_real_stats(tmp_path):
    modules, _ = build(SMALL, tmp_path / "a")
    gen = torch.Generator().manual_seed(3)
    x = 2.0 * torch.randn(1, 60, 40, generator=gen) + 5.0
    norm = modules["normalize"]
    norm.train()
    with torch.no_grad():
        norm(x, torch.tensor([1.0]))
    # statistics come from the data alone, not mixed with the mean-0/std-1 placeholders
    assert norm.count == 60
    assert torch.allclose(norm.glob_mean, x[0].mean(0), atol=1e-5)
    assert torch.allclose(norm.glob_std, x[0].std(0, unbiased=False), rtol=1e-4)

    mean = norm.glob_mean.clone()
    weights.init_norm_stats(modules, 40)  # real statistics are left alone
    assert torch.equal(norm.glob_mean, mean) and norm.count == 60


def test_weights_to_state_dict_keeps_shapes_and_saves_loadable(tmp_path, small, fresh):
    keys = weights.weight_keys(small)
    arrays = weights.get_weights(small)
    expected = [a.copy() for a in arrays]
    state = weights.weights_to_state_dict(arrays, keys)
    assert list(state) == keys
    assert state["normalize.count"].shape == () and state["normalize.count"].dtype == torch.int64
    for key, array in zip(keys, arrays, strict=True):
        assert tuple(state[key].shape) == array.shape, key  # 0-d arrays stay 0-d
    arrays[0] += 1  # the state dict owns copies
    assert not np.array_equal(state[keys[0]].numpy(), arrays[0])

    path = tmp_path / "server.ckpt"
    weights.save_checkpoint(state, path)
    weights.load_model_file(fresh, path)
    assert_same_arrays(weights.get_weights(fresh), expected, keys)
    with pytest.raises(ValueError, match="expected 36 weight arrays, got 35"):
        weights.weights_to_state_dict(arrays[:-1], keys)
