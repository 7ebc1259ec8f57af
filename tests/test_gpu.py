"""The full-size configs on a CUDA GPU: training, weights and evaluation (skipped without one).

The tutorial's models (``template.yaml``, 46M parameters; ``CRDNN.yaml``, 159M) are meant for a
GPU, which CI machines lack: these tests run where ``torch.cuda.is_available()``
(``pytest -m gpu``). A real client's :class:`local_training.LocalTrainer` trains a few epochs on
real utterances of ``temp_dataset`` on the GPU; what it hands to Flower must be plain CPU arrays
that load back bit for bit, the normalisation statistics must travel with them, and evaluation
(beam search) must run on the GPU and, with ``--eval_device cpu``, off it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, subset_tsv

from fedspeech.roles.local_training import LocalTrainer
from fedspeech.speech.model import init_model
from weights import get_weights, set_weights, weight_keys

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
TRAIN_UTTS = 16
EPOCHS = 4


def build_on_gpu(config: str, data: Path, out: Path):
    return init_model(
        ROOT / "configs" / config, output_folder=out, data_folder=ROOT / "temp_dataset",
        train_tsv=data / "train.tsv", valid_tsv=data / "dev.tsv",
        tokenizer_source=ROOT / "temp_dataset" / "train.tsv", device="cuda",
    )


@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu_data")
    subset_tsv(ROOT / "temp_dataset" / "train_0.tsv", folder / "train.tsv", TRAIN_UTTS)
    subset_tsv(ROOT / "temp_dataset" / "dev.tsv", folder / "dev.tsv", 8)
    return folder


@pytest.mark.parametrize("config", ["template.yaml", "CRDNN.yaml"])
def test_full_size_model_trains_on_gpu_and_ships_cpu_arrays(tmp_path, gpu_data, config):
    brain, data = build_on_gpu(config, gpu_data, tmp_path / "out")
    assert all(p.device.type == "cuda" for p in brain.modules.parameters())
    trainer = LocalTrainer("0", brain, data)
    start = trainer.weights()
    train_loss_before = brain.test(data["train"])["loss"]

    new, samples, metrics = trainer.fit(start, rnd=1, epochs=EPOCHS)

    assert samples == EPOCHS * TRAIN_UTTS
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["valid_wer"])
    # Flower gets CPU numpy arrays, one per weight key, with the shapes and dtypes it started with.
    keys = weight_keys(brain.modules)
    assert len(new) == len(keys) == len(start)
    assert all(isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
               for a, b in zip(new, start, strict=True))
    assert all(np.isfinite(a).all() for a in new if a.dtype.kind == "f")
    changed = {k for k, a, b in zip(keys, new, start, strict=True) if not np.array_equal(a, b)}
    assert {"normalize.glob_mean", "normalize.glob_std"} <= changed  # statistics travel too
    assert len(changed) > len(keys) // 2
    # It learnt: the loss on its own training utterances fell.
    assert brain.test(data["train"])["loss"] < train_loss_before
    assert brain.modules["normalize"].glob_mean.device.type == "cuda"


@pytest.mark.parametrize("config", ["template.yaml", "CRDNN.yaml"])
def test_gpu_weights_round_trip_and_evaluate_on_and_off_the_gpu(tmp_path, gpu_data, config):
    brain, data = build_on_gpu(config, gpu_data, tmp_path / "out")
    trainer = LocalTrainer("0", brain, data)
    new, _, _ = trainer.fit(trainer.weights(), rnd=1, epochs=1)

    set_weights(new, brain.modules, brain.device)
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(brain.modules), new, strict=True))
    loss_gpu, n, gpu = trainer.evaluate(new)
    trainer.eval_device = "cpu"
    loss_cpu, _, cpu = trainer.evaluate(new)

    assert n == 8 and math.isfinite(loss_gpu) and 0 <= gpu["wer"]
    # The same weights score the same off the GPU (cuDNN's TF32 kernels differ in the low bits).
    assert loss_cpu == pytest.approx(loss_gpu, rel=1e-2)
    assert all(p.device.type == "cuda" for p in brain.modules.parameters())  # moved back
