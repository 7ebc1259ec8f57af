"""Per-speaker mean normalisation (speaker_norm.py, ``norm_type: speaker`` of real_cpu.yaml)."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT

from fedspeech.speech.speaker_norm import SpeakerNormalization, utterance_means


def frames(wav: torch.Tensor) -> torch.Tensor:
    """A stand-in feature extractor: [1, samples] -> [1, samples / 2, 2]."""
    return wav.reshape(1, -1, 2)


def test_each_speaker_loses_its_own_mean_and_unknown_speakers_their_utterances():
    norm = SpeakerNormalization()
    a1 = torch.tensor([1.0, 10.0, 3.0, 10.0])  # frame means [2, 10]
    a2 = torch.tensor([4.0, 20.0])  # [4, 20]
    b1 = torch.tensor([0.0, -1.0, 0.0, -3.0])  # [0, -2]
    norm.add_utterances([("a1", "ann", a1), ("a2", "ann", a2), ("b1", "bob", b1)], frames)
    norm.add_utterances([("a2", "ann", a2 + 100)], frames)  # an id already counted: ignored

    x = torch.tensor([[[1.0, 1.0], [3.0, 3.0]],
                      [[5.0, 5.0], [0.0, 0.0]],  # second frame is padding
                      [[7.0, 1.0], [9.0, 3.0]]])
    lengths = torch.tensor([1.0, 0.5, 1.0])
    out = norm(x, lengths, spk_ids=["ann", "zed", "bob"])

    assert norm.speakers == ["ann", "bob"]
    assert torch.allclose(norm.speaker_mean("ann"), torch.tensor([3.0, 15.0]))
    assert torch.allclose(out[0], x[0] - torch.tensor([3.0, 15.0]))
    assert torch.allclose(out[1], x[1] - torch.tensor([5.0, 5.0]))  # its own, padding excluded
    assert torch.allclose(out[2], x[2] - torch.tensor([0.0, -2.0]))
    # Without speaker ids every utterance gets its own mean, as norm_type: sentence would.
    assert torch.allclose(norm(x, lengths), x - utterance_means(x, lengths).unsqueeze(1))
    sentence = SpeakerNormalization(norm_type="sentence", std_norm=False)
    assert torch.allclose(norm(x, lengths), sentence(x, lengths))


def test_other_norm_types_are_speechbrains_and_speaker_refuses_std():
    x, lengths = torch.randn(2, 5, 3), torch.ones(2)
    sentence = SpeakerNormalization(norm_type="sentence", std_norm=False)
    assert torch.allclose(sentence(x, lengths), x - x.mean(1, keepdim=True), atol=1e-6)
    with pytest.raises(ValueError, match="speaker"):
        SpeakerNormalization(norm_type="speaker", std_norm=True)


def test_real_cpu_measures_every_speaker_of_its_datasets(tmp_path):
    """Building real_cpu.yaml's datasets measures their speakers (unlabelled audio only); nothing
    about them is in the weights, and a training batch is normalised by its speakers' means."""
    import speechbrain as sb
    from conftest import subset_tsv
    from speechbrain.dataio.batch import PaddedBatch

    from common_voice_prepare import read_tsv
    from fedspeech.speech.model import init_model
    from weights import model_state_dict

    subset_tsv(ROOT / "temp_dataset" / "train.tsv", tmp_path / "train.tsv", 6)
    subset_tsv(ROOT / "temp_dataset" / "test_unseen.tsv", tmp_path / "unseen.tsv", 3)
    brain, data = init_model(
        ROOT / "configs" / "real_cpu.yaml", output_folder=tmp_path / "out",
        data_folder=ROOT / "temp_dataset", train_tsv=tmp_path / "train.tsv",
        extra_tsvs={"unseen": tmp_path / "unseen.tsv"},
        tokenizer_source=ROOT / "temp_dataset" / "train.tsv", device="cpu",
        overrides={"token_type": "char", "augment_prob": 0.0, "vtlp_factor": 0.0},
    )
    norm = brain.modules.normalize
    tsv_speakers = {r["client_id"] for name in ("train", "unseen")
                    for r in read_tsv(tmp_path / f"{name}.tsv")}
    assert norm.norm_type == "speaker" and set(norm.speakers) == tsv_speakers
    assert not any("glob_" in k for k in model_state_dict(brain.modules))

    # Datasets built again (a ClientApp does so for every message) count nothing twice and load
    # no audio for utterances already measured.
    from unittest import mock

    from fedspeech.speech import audio as audio_data
    from fedspeech.speech.model import datasets_for, prepare_splits

    counts = {spk: norm._counts[spk] for spk in norm.speakers}
    with mock.patch.object(audio_data, "load_audio", side_effect=AssertionError("audio loaded")):
        datasets_for(brain, prepare_splits(vars(brain.hparams), ROOT / "temp_dataset",
                                           {"train": tmp_path / "train.tsv"}))
    assert {spk: norm._counts[spk] for spk in norm.speakers} == counts

    items = [data["train"][i] for i in range(3)]
    batch = PaddedBatch(items)
    feats = brain.hparams.compute_features(batch.sig[0])
    normalised = norm(feats, batch.sig[1], spk_ids=batch.spk_id)
    for i, item in enumerate(items):
        expected = feats[i] - norm.speaker_mean(item["spk_id"])
        assert torch.allclose(normalised[i], expected, atol=1e-5)
    # The Brain hands the batch's speakers to the normalisation, in training and evaluation.
    seen = []
    norm.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["spk_ids"]),
                                   with_kwargs=True)
    with torch.no_grad():
        for stage in (sb.Stage.TRAIN, sb.Stage.TEST):
            brain.compute_forward(batch, stage)
    assert seen == [batch.spk_id, batch.spk_id]
