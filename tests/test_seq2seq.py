"""The GPU configs' joint CTC + attention path, run on CPU with the model shrunk by overrides."""

from __future__ import annotations

import math

import pytest
import speechbrain as sb
from conftest import ROOT

from fedspeech.speech.model import init_model
from weights import get_weights, set_weights

TINY = {
    "cnn_blocks": 1, "cnn_channels": [8], "inter_layer_pooling_size": [2], "rnn_layers": 1,
    "rnn_neurons": 32, "dnn_blocks": 1, "dnn_neurons": 32, "dec_neurons": 32, "attn_dim": 32,
    "emb_size": 8, "output_neurons": 40, "valid_beam_size": 2, "test_beam_size": 3,
    "number_of_ctc_epochs": 1, "language": "en", "batch_size": 4, "test_batch_size": 4,
}
SEARCHERS = ("greedy_searcher", "valid_search", "test_search")


def record_searches(monkeypatch, hparams) -> list[str]:
    """Names of the searchers that decode, one per batch; the real searchers still run."""
    calls: list[str] = []
    for name in SEARCHERS:
        searcher = getattr(hparams, name)

        def forward(*args, _name=name, _real=searcher.forward, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(searcher, "forward", forward)
    return calls


@pytest.mark.parametrize("config", ["template.yaml", "CRDNN.yaml"])
def test_joint_ctc_attention_trains_and_decodes(tmp_path, small_data, config, monkeypatch):
    brain, data = init_model(
        ROOT / "configs" / config, output_folder=tmp_path, data_folder=small_data,
        train_tsv=small_data / "train_add.tsv", valid_tsv=small_data / "dev.tsv",
        test_tsv=small_data / "dev.tsv", tokenizer_source=small_data / "train.tsv",
        device="cpu", overrides=TINY,
    )
    assert brain.is_seq2seq and brain.hparams.decode_method == "beam"
    assert (brain.hparams.valid_search.beam_size, brain.hparams.test_search.beam_size) == (2, 3)
    searches = record_searches(monkeypatch, brain.hparams)
    real_ctc = brain.hparams.ctc_cost
    # A CTC term of exactly 1000 shows up in the loss only while it is weighted in.
    monkeypatch.setattr(brain.hparams, "ctc_cost", lambda *a, **k: real_ctc(*a, **k) * 0 + 1000)
    # Global epoch 1 is inside the CTC phase (number_of_ctc_epochs 1): 0.3 x 1000 is added.
    samples, loss, wer = brain.train_epochs(data["train"], data["dev"], epochs=1, first_epoch=1)
    assert samples == 12 and loss > 300 and math.isfinite(wer)
    assert searches == ["valid_search"] * 3  # validation: 12 utterances, batches of 4
    # Global epoch 2 (round 2 of a federation, whose epoch counter restarted) is past it.
    _, loss2, _ = brain.train_epochs(data["train"], None, epochs=1, first_epoch=2)
    assert loss2 < 100
    assert brain.hparams.epoch_counter.current == 2
    monkeypatch.setattr(brain.hparams, "ctc_cost", real_ctc)
    searches.clear()
    result = brain.test(data["test"])  # a per-round evaluation: the narrow beam
    assert result["samples"] == 12 and math.isfinite(result["wer"]) and result["loss"] < 100
    assert sb.Stage.TEST in brain.stage_stats
    assert searches == ["valid_search"] * 3
    searches.clear()
    final = brain.test(data["test"], final=True)  # the final test: the wide beam, this time only
    assert final["samples"] == 12 and math.isfinite(final["wer"])
    assert searches == ["test_search"] * 3 and not brain.final_test
    searches.clear()
    monkeypatch.setattr(brain.hparams, "decode_method", "greedy")
    brain.test(data["test"], final=True)  # greedy decoding has no final variant
    assert searches == ["greedy_searcher"] * 3
    set_weights(get_weights(brain.modules), brain.modules)
