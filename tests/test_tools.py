"""The data tools: partitioning (by speaker, IID, bad clients) and reproducibility by seed."""

from __future__ import annotations

import collections
import sys

import numpy as np
import pytest
from conftest import ROOT, make_small_data, run_cli

from common_voice_prepare import read_tsv
from fedspeech.speech.audio import load_audio
from fedspeech.speech.model import init_model
from weights import get_weights


def partition(tmp_path, name, *extra):
    out = tmp_path / name
    result = run_cli([sys.executable, "scripts/partition.py", "--tsv",
                      str(ROOT / "temp_dataset" / "train.tsv"), "--out_dir", str(out), *extra])
    assert result.returncode == 0, result.stderr
    return out


def test_by_speaker_gives_each_speaker_to_one_client(tmp_path):
    out = partition(tmp_path, "p", "--num_clients", "3")
    parts = [read_tsv(out / f"train_{k}.tsv") for k in range(3)]
    speakers = [{r["client_id"] for r in rows} for rows in parts]
    assert all(len(s) == 2 for s in speakers)  # 6 voices over 3 clients
    assert not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])
    assert sum(len(rows) for rows in parts) == 600
    assert [len(rows) for rows in parts] == [200, 200, 200]


def test_same_seed_same_partitions_other_seed_differs(tmp_path):
    a = partition(tmp_path, "a", "--num_clients", "4", "--by", "iid", "--seed", "7")
    b = partition(tmp_path, "b", "--num_clients", "4", "--by", "iid", "--seed", "7")
    c = partition(tmp_path, "c", "--num_clients", "4", "--by", "iid", "--seed", "8")
    for k in range(4):
        assert (a / f"train_{k}.tsv").read_bytes() == (b / f"train_{k}.tsv").read_bytes()
    assert (a / "train_0.tsv").read_bytes() != (c / "train_0.tsv").read_bytes()
    sizes = [len(read_tsv(a / f"train_{k}.tsv")) for k in range(4)]
    assert sizes == [150, 150, 150, 150]


def test_bad_client_shuffled_transcripts(tmp_path):
    good = partition(tmp_path, "good", "--num_clients", "3")
    bad = partition(tmp_path, "bad", "--num_clients", "3", "--bad_client", "1")
    assert (good / "train_0.tsv").read_bytes() == (bad / "train_0.tsv").read_bytes()
    g, b = read_tsv(good / "train_1.tsv"), read_tsv(bad / "train_1.tsv")
    assert [r["path"] for r in g] == [r["path"] for r in b]
    assert collections.Counter(r["sentence"] for r in g) == collections.Counter(
        r["sentence"] for r in b)
    same = sum(x["sentence"] == y["sentence"] for x, y in zip(g, b, strict=True))
    assert same < len(g) * 0.1  # nearly every clip now has someone else's transcript


def test_bad_client_noise(tmp_path):
    data = make_small_data(tmp_path / "data", per_client=3, clients=1)
    out = tmp_path / "noisy"
    result = run_cli([sys.executable, "scripts/partition.py", "--tsv", str(data / "train_0.tsv"),
                      "--out_dir", str(out), "--num_clients", "1", "--by", "iid",
                      "--bad_client", "0", "--corruption", "noise", "--snr_db", "0",
                      "--data_path", str(data)])
    assert result.returncode == 0, result.stderr
    rows = read_tsv(out / "train_0.tsv")
    original = {r["sentence"] for r in read_tsv(data / "train_0.tsv")}
    for row in rows:
        assert row["sentence"] in original
        noisy = load_audio(str(out / "clips" / row["path"]), 16000).numpy()
        clean_name = row["path"].replace(".wav", ".mp3")
        clean = load_audio(str(data / "clips" / clean_name), 16000).numpy()
        n = min(len(noisy), len(clean))
        noise = noisy[:n] - clean[:n]
        snr = 10 * np.log10(np.mean(clean[:n] ** 2) / np.mean(noise**2))
        assert -2 < snr < 2  # 0 dB asked (clipping aside)


def test_partition_errors_are_one_line(tmp_path):
    result = run_cli([sys.executable, "scripts/partition.py", "--tsv",
                      str(ROOT / "temp_dataset" / "train.tsv"), "--out_dir", str(tmp_path),
                      "--num_clients", "7"])
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: only 6 speakers for 7 clients: use --by iid or "
                                     "fewer clients")


@pytest.mark.parametrize("seed, same", [(1234, True), (99, False)])
def test_same_seed_same_first_round_model_and_tokenizer(tmp_path, small_data, seed, same):
    """Two server builds: the initial global model and the tokenizer depend only on the seed."""
    built = []
    for i, s in enumerate((1234, seed)):
        brain, _ = init_model(ROOT / "configs" / "small_cpu.yaml", output_folder=tmp_path / str(i),
                              data_folder=small_data, test_tsv=small_data / "test.tsv",
                              tokenizer_source=small_data / "train.tsv", device="cpu",
                              overrides={"seed": s})
        built.append((get_weights(brain.modules), brain.tokenizer.sha256))
    (w0, sha0), (w1, sha1) = built
    assert sha0 == sha1  # the tokenizer depends on the transcripts only
    equal = all(np.array_equal(a, b) for a, b in zip(w0, w1, strict=True))
    assert equal is same
