"""Bringing recordings in (import_recordings.py) and leave-one-speaker-out folds: fast, no training,
on a few generated WAV files (no dependency on any real corpus)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, run_cli

from common_voice_prepare import prepare_tsv, read_tsv
from fedspeech.base.errors import UserError
from fedspeech.speech.folds import make_folds, split_takes
from fedspeech.tools.import_recordings import fsdd_labels, transcript_labels

PYTHON = sys.executable


def write_wav(path, seconds: float = 0.3, rate: int = 8000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)


def test_fsdd_pattern_imports_digits_and_speakers(tmp_path):
    src = tmp_path / "recordings"
    for digit, speaker, take in ((0, "alice", 0), (7, "alice", 1), (3, "bob", 12)):
        write_wav(src / f"{digit}_{speaker}_{take}.wav")
    write_wav(src / "notes.wav")  # not an FSDD name: skipped
    out = tmp_path / "cv"
    result = run_cli([PYTHON, "scripts/import_recordings.py", str(src), str(out),
                      "--pattern", "fsdd"])
    assert result.returncode == 0, result.stderr
    rows = read_tsv(out / "all.tsv")
    assert {(r["path"], r["sentence"], r["client_id"]) for r in rows} == {
        ("0_alice_0.wav", "zero", "speaker_alice"), ("7_alice_1.wav", "seven", "speaker_alice"),
        ("3_bob_12.wav", "three", "speaker_bob")}
    assert len(read_tsv(out / "speaker_alice.tsv")) == 2
    assert (out / "clips" / "3_bob_12.wav").is_file()
    assert "skipped 1" in result.stderr
    # The project's own data preparation reads the result (8 kHz audio, durations found).
    count = prepare_tsv(out / "all.tsv", tmp_path / "all.csv", out)
    assert count == 3


def test_transcript_map_with_and_without_speaker_column(tmp_path):
    src = tmp_path / "wavs"
    write_wav(src / "a.wav")
    write_wav(src / "sub" / "b.wav", rate=16000)
    labels = tmp_path / "labels.tsv"
    labels.write_text("# file, words, speaker\na.wav\thello world\tann\nsub/b.wav\tgood bye\n",
                      encoding="utf-8")
    out = tmp_path / "cv"
    result = run_cli([PYTHON, "scripts/import_recordings.py", str(src), str(out),
                      "--transcripts", str(labels), "--speaker", "carl"])
    assert result.returncode == 0, result.stderr
    rows = {r["path"]: r for r in read_tsv(out / "all.tsv")}
    assert rows["a.wav"]["sentence"] == "hello world"
    assert rows["a.wav"]["client_id"] == "speaker_ann"
    assert rows["sub__b.wav"]["client_id"] == "speaker_carl"
    assert (out / "clips" / "sub__b.wav").is_file()


def test_bad_transcript_maps_are_one_line_errors(tmp_path):
    labels = tmp_path / "labels.tsv"
    labels.write_text("a.wav\thello\n", encoding="utf-8")
    with pytest.raises(UserError, match="no speaker"):
        transcript_labels(labels, None)
    labels.write_text("a.wav\n", encoding="utf-8")
    with pytest.raises(UserError, match="labels.tsv:1"):
        transcript_labels(labels, "x")
    (tmp_path / "src").mkdir()
    labels.write_text("missing.wav\thi\tx\n", encoding="utf-8")
    result = run_cli([PYTHON, "scripts/import_recordings.py", str(tmp_path / "src"),
                      str(tmp_path / "out"), "--transcripts", str(labels)])
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "missing.wav" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_fsdd_labels_ignore_other_names():
    assert fsdd_labels(["9_x_1.wav", "readme.txt", "10_x_1.wav"]) == [("9_x_1.wav", "nine", "x")]


def rows_of(speakers: dict[str, int]) -> list[dict[str, str]]:
    return [{"client_id": s, "path": f"{s}_{i}.wav", "sentence": str(i % 10)}
            for s, n in speakers.items() for i in range(n)]


def test_folds_hold_each_speaker_out_and_keep_splits_disjoint():
    rows = rows_of({"a": 50, "b": 40, "c": 30})
    fractions = {"dev": 0.1, "test": 0.1, "server": 0.2}
    folds = make_folds(rows, seed=7, fractions=fractions)
    assert [f.held_out for f in folds] == ["a", "b", "c"]
    for fold in folds:
        assert {r["client_id"] for r in fold.unseen} == {fold.held_out}
        paths = [r["path"] for split in fold.parts.values() for r in split]
        assert len(paths) == len(set(paths))  # disjoint
        assert fold.held_out not in {r["client_id"] for r in map(dict, sum(fold.parts.values(),
                                                                          []))}
        assert len(fold.clients) == 2
        assert all(len({r["client_id"] for r in c}) == 1 for c in fold.clients)
    # A speaker's new takes are the same in every fold it trains in, and seeded.
    test_b = [{r["path"] for r in f.parts["test"] if r["client_id"] == "b"} for f in folds
              if f.held_out != "b"]
    assert test_b[0] == test_b[1] and len(test_b[0]) == 4
    again = make_folds(rows, seed=7, fractions=fractions)
    assert [r["path"] for r in again[0].parts["train"]] == [r["path"] for r in
                                                            folds[0].parts["train"]]


def test_split_takes_sizes_and_errors():
    parts = split_takes(rows_of({"a": 100}), 1, {"dev": 0.04, "test": 0.1, "server": 0.1})
    assert {k: len(v) for k, v in parts.items()} == {"dev": 4, "test": 10, "server": 10,
                                                     "train": 76}
    with pytest.raises(UserError):
        split_takes(rows_of({"a": 2}), 1, {"dev": 0.5, "test": 0.5})
    with pytest.raises(UserError):
        make_folds(rows_of({"a": 5}), seed=1, fractions={})


def test_speaker_eval_resume_reuses_kept_runs(tmp_path):
    """--resume reuses a fold's kept runs: asked for the kept kinds, it runs nothing."""
    import json

    from fedspeech.tools.speaker_eval import build_parser, run_fold, settings

    args = build_parser().parse_args([str(tmp_path), "--resume", "--save_path", str(tmp_path)])
    fold = make_folds(rows_of({"a": 20, "b": 20}), seed=1, fractions={"test": 0.1})[0]
    kept = tmp_path / fold.held_out / "result.json"
    kept.parent.mkdir()
    federated = {"test_wer": 5.0, "unseen_wer": 30.0, "seconds": 300.0}
    kept.write_text(json.dumps({"federated": federated, "settings": settings(args)}))

    result = run_fold(fold, args, ["federated"])

    assert result["federated"] == federated and result["held_out"] == fold.held_out
    assert "centralised" not in result
    assert not (tmp_path / fold.held_out / "train.tsv").exists()  # nothing was run
    centralised = {"test_wer": 4.0, "unseen_wer": 35.0, "seconds": 400.0}
    kept.write_text(json.dumps({"federated": federated, "centralised": centralised,
                                "settings": settings(args)}))
    both = run_fold(fold, args, ["federated", "centralised"])
    assert both["federated"] == federated and both["centralised"] == centralised


def test_pretrain_merges_comma_separated_tsvs(tmp_path):
    from fedspeech.tools.pretrain import training_tsv

    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text("client_id\tpath\tsentence\nv1\t1.mp3\tone\n", encoding="utf-8")
    b.write_text("client_id\tpath\tsentence\tage\nv2\t2.mp3\ttwo three\t\n", encoding="utf-8")

    merged = training_tsv(f"{a},{b}", tmp_path / "work")

    assert [(r["client_id"], r["path"], r["sentence"]) for r in read_tsv(merged)] == [
        ("v1", "1.mp3", "one"), ("v2", "2.mp3", "two three")]
    assert training_tsv(str(a), tmp_path / "work") == str(a)  # one TSV is used as it is
    with pytest.raises(UserError, match="nope.tsv"):
        training_tsv(f"{a},{tmp_path / 'nope.tsv'}", tmp_path / "work")


def test_speaker_eval_checks_the_pretrained_folder(tmp_path):
    """--pretrained needs both files, and a tokenizer that can write every word of the corpus."""
    from fedspeech.base.errors import UsageError
    from fedspeech.speech.tokenizer import load_tokenizer
    from fedspeech.tools.speaker_eval import build_parser, run

    (tmp_path / "clips").mkdir()
    (tmp_path / "all.tsv").write_text(
        "client_id\tpath\tsentence\na\tx.wav\tone\nb\ty.wav\tthree two\n", encoding="utf-8")
    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "model.ckpt").write_bytes(b"")
    args = build_parser().parse_args([str(tmp_path), "--pretrained", str(pre)])
    with pytest.raises(UsageError, match="--pretrained .*tokenizer.model"):
        run(args)
    known = tmp_path / "known.tsv"
    known.write_text("client_id\tpath\tsentence\nv\tz.wav\tone two\n", encoding="utf-8")
    model = load_tokenizer(known, tmp_path / "tok", vocab_size=8, model_type="word").path
    (pre / "tokenizer.model").write_bytes(model.read_bytes())

    with pytest.raises(UsageError, match="no tokens for THREE of"):
        run(build_parser().parse_args([str(tmp_path), "--pretrained", str(pre)]))


def test_speaker_eval_rejects_bad_flags(tmp_path):
    (tmp_path / "clips").mkdir()
    result = run_cli([PYTHON, "scripts/speaker_eval.py", str(tmp_path), "--runs", "both"])
    assert result.returncode == 2 and "--runs" in result.stderr
    result = run_cli([PYTHON, "scripts/speaker_eval.py", str(tmp_path / "nope")])
    assert result.returncode == 2 and "clips" in result.stderr
    tsv = tmp_path / "all.tsv"
    tsv.write_text("client_id\tpath\tsentence\na\tx.wav\tone\nb\ty.wav\ttwo\n", encoding="utf-8")
    result = run_cli([PYTHON, "scripts/speaker_eval.py", str(tmp_path), "--folds", "zed"])
    assert result.returncode == 2 and "zed" in result.stderr
    assert ROOT.is_dir()


@pytest.mark.parametrize(
    "norm_type, ships_statistics", [("speaker", False), ("sentence", False), ("global", True)])
def test_real_cpu_config_augments_and_normalises(tmp_path, norm_type, ships_statistics):
    """The real-speech recipe's augmenters keep the batch; its ``norm_type`` knob decides whether
    normalisation statistics travel with the weights (global) or stay with each site (per speaker,
    per utterance)."""
    import torch

    from fedspeech.speech import config as config_file
    from weights import model_state_dict

    path = ROOT / "configs" / "real_cpu.yaml"
    hparams = config_file.load_hparams(
        path, {"output_folder": str(tmp_path), "augment_prob": 1.0, "norm_type": norm_type})
    config_file.check_config_keys(path, hparams)
    wavs, lens = torch.randn(3, 4000) * 0.1, torch.ones(3)
    wavs, lens = hparams["wav_augment"](wavs, lens)
    feats = hparams["normalize"](hparams["compute_features"](wavs), lens)
    masked, _ = hparams["feature_augment"](feats, lens)
    assert masked.shape == feats.shape and wavs.shape[0] == 3
    state = model_state_dict(torch.nn.ModuleDict(hparams["modules"]))
    assert any(k.endswith("glob_mean") for k in state) is ships_statistics


def test_trim_silence_cuts_quiet_ends_only():
    import torch

    from fedspeech.speech.audio import trim_silence

    rate = 8000
    gen = torch.Generator().manual_seed(0)
    quiet = 3e-4 * torch.randn(1600, generator=gen)  # 0.2 s at about -70 dB
    t = torch.arange(2400) / rate
    speech = 0.1 * torch.sin(2 * torch.pi * 440 * t)  # 0.3 s at about -23 dB
    signal = torch.cat([quiet, speech, quiet])

    trimmed = trim_silence(signal, rate, top_db=30, margin=0.05)

    assert trimmed.numel() == 2400 + 2 * 400  # the speech and 50 ms either side
    assert torch.equal(trimmed[400:2800], speech)  # a slice: no sample changed
    assert trim_silence(signal, rate, top_db=80).numel() == signal.numel()  # floor above -70 dB
    silent = torch.zeros(4000)
    assert torch.equal(trim_silence(silent, rate, top_db=30), silent)
    assert trim_silence(torch.ones(40), rate, top_db=30).numel() == 40  # shorter than a frame


def test_learning_rate_halves_every_half_life_across_rounds(tmp_path):
    """real_cpu.yaml's ``lr_annealing`` follows the epoch numbering that counts across rounds,
    for the clients' rate and the server's alike (a fresh optimiser each round)."""
    from conftest import subset_tsv

    from fedspeech.speech.model import init_model

    subset_tsv(ROOT / "temp_dataset" / "train_0.tsv", tmp_path / "train.tsv", 4)
    brain, data = init_model(
        ROOT / "configs" / "real_cpu.yaml", output_folder=tmp_path / "out",
        data_folder=ROOT / "temp_dataset", train_tsv=tmp_path / "train.tsv",
        tokenizer_source=ROOT / "temp_dataset" / "train.tsv", device="cpu",
        overrides={"token_type": "char"},
    )
    half_life, lr, server_lr = (brain.hparams.lr_half_life, brain.hparams.lr,
                                brain.hparams.server_lr)

    def rate_after(first_epoch: int, lr_override: float | None = None) -> float:
        brain.train_epochs(data["train"], None, epochs=1, first_epoch=first_epoch,
                           lr=lr_override)
        return brain.optimizer.param_groups[0]["lr"]

    assert rate_after(1) == pytest.approx(lr * 2 ** (-1 / half_life))
    assert rate_after(2 * half_life) == pytest.approx(lr / 4)  # round 5 of 2-epoch rounds
    assert rate_after(half_life, server_lr) == pytest.approx(server_lr / 2)


def test_vtlp_warps_training_features_only(tmp_path):
    """real_cpu.yaml's vocal tract length perturbation (Fbank's param_rand_factor) changes every
    training forward pass and never an evaluation one: the feature extractor lives outside the
    Brain's modules, so compute_forward sets its mode itself."""
    import speechbrain as sb
    import torch
    from conftest import subset_tsv
    from speechbrain.dataio.batch import PaddedBatch

    from fedspeech.speech.model import init_model

    subset_tsv(ROOT / "temp_dataset" / "train_0.tsv", tmp_path / "train.tsv", 2)
    brain, data = init_model(
        ROOT / "configs" / "real_cpu.yaml", output_folder=tmp_path / "out",
        data_folder=ROOT / "temp_dataset", train_tsv=tmp_path / "train.tsv",
        tokenizer_source=ROOT / "temp_dataset" / "train.tsv", device="cpu",
        overrides={"token_type": "char", "augment_prob": 0.0},  # only VTLP is random
    )
    assert brain.hparams.vtlp_factor > 0
    batch = PaddedBatch([data["train"][i] for i in range(2)])
    brain.modules.eval()  # no dropout: what differs between two passes is the features

    def p_ctc(stage) -> torch.Tensor:
        with torch.no_grad():
            return brain.compute_forward(batch, stage)["p_ctc"]

    torch.manual_seed(0)
    assert not torch.allclose(p_ctc(sb.Stage.TRAIN), p_ctc(sb.Stage.TRAIN))
    assert torch.equal(p_ctc(sb.Stage.TEST), p_ctc(sb.Stage.TEST))
    assert not brain.hparams.compute_features.training
