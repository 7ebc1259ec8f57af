"""Every bad input ends in ONE line ``error: ...`` on stderr naming the file or flag, exit status 2.

Each case in ``CASES`` is a real run of ``server.py``, ``client.py``, ``scripts/pretrain.py`` or
``common_voice_prepare.py``: a command line (a template: ``{data}`` is the shared small data set,
``{tmp}`` the case's own folder, ``{port}`` a free port, ``{ckpt}`` a real small_cpu checkpoint),
a setup that creates the bad file, and the fragments the error line must contain. Most cases fail
in ``check_args`` before any model is built; the rest need data preparation or a model. The runs
are started together, a few at a time (``WORKERS``), once per module; each test then checks one.

Bad clips mixed with good ones are not an error (a warning names them), and audio at another
sample rate or with two channels is resampled and downmixed: ``test_odd_audio_*`` prove both with
one real ``scripts/pretrain.py --epochs 1`` run. A full disk is simulated in-process.
``BAD_INPUT_TIMES=1 pytest -s tests/test_bad_input.py`` prints every run's time and error line.
"""

from __future__ import annotations

import argparse
import errno
import os
import pathlib
import random
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import atomic_file
import audio_data
import cli
import config_file
import history
import weights
from tests.conftest import ROOT, client_cmd, free_port, run_cli, server_cmd, subset_tsv

PY = sys.executable
WORKERS = min(3, os.cpu_count() or 1)  # concurrent runs; each mostly imports torch, SpeechBrain
SMALL_CPU = ROOT / "configs" / "small_cpu.yaml"
TSV_HEADER = "client_id\tpath\tsentence\n"


# ---- the case table ----------------------------------------------------------------------------
@dataclass
class Ctx:
    """What a case's command, setup and expectation may refer to."""

    data: Path  # the shared small data set (read-only)
    tmp: Path  # this case's own folder
    port: int  # a port nothing listens on
    ckpt: Path  # a real checkpoint of small_cpu
    keep: list = field(default_factory=list)  # resources held open while the command runs

    def fmt(self, text: str) -> str:
        return text.format(data=self.data, tmp=self.tmp, port=self.port, ckpt=self.ckpt)


@dataclass(frozen=True)
class Case:
    id: str
    cmd: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]  # templates; each must be in the one error line
    setup: Callable[[Ctx], None] | None = None
    check: Callable[[Ctx], None] | None = None  # more assertions after the run

    def __repr__(self) -> str:
        return self.id


def client(*extra: str) -> Callable[[Ctx], list[str]]:
    """client.py on the small data set (cid 0), with ``extra`` flags overriding the defaults."""
    return lambda c: client_cmd(c.data, c.tmp / "out", c.port, 0, *map(c.fmt, extra))


def tiny_client(*extra: str) -> Callable[[Ctx], list[str]]:
    """client.py on 4 training/dev clips: for cases that fail only once the model exists."""
    tiny = ("--tr_path", "{data}/tiny.tsv", "--dev_path", "{data}/tiny.tsv")
    return client(*tiny, *extra)


def server(*extra: str) -> Callable[[Ctx], list[str]]:
    return lambda c: server_cmd(c.data, c.tmp / "out", c.port, *map(c.fmt, extra))


def script(*argv: str) -> Callable[[Ctx], list[str]]:
    return lambda c: [PY, *map(c.fmt, argv)]


def write(name: str, text: str | bytes) -> Callable[[Ctx], None]:
    """Setup: a file ``{tmp}/<name>`` with this content."""

    def setup(c: Ctx) -> None:
        path = c.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(c.fmt(text), encoding="utf-8")

    return setup


def good_rows(c: Ctx, n: int = 3) -> list[str]:
    """Rows (client_id, path, sentence) of real clips from the small data set."""
    lines = (c.data / "train_0.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    idx = [header.index(k) for k in ("client_id", "path", "sentence")]
    return ["\t".join(line.split("\t")[i] for i in idx) for line in lines[1:1 + n]]


def clip_folder(files: dict[str, bytes]) -> Callable[[Ctx], None]:
    """Setup: ``{tmp}/cv/clips/`` holding only ``files``, and ``{tmp}/cv/train.tsv`` naming them."""

    def setup(c: Ctx) -> None:
        clips = c.tmp / "cv" / "clips"
        clips.mkdir(parents=True)
        rows = []
        for name, content in files.items():
            (clips / name).write_bytes(content)
            rows.append(f"spk\t{name}\tOne two three.")
        (c.tmp / "cv" / "train.tsv").write_text(TSV_HEADER + "\n".join(rows) + "\n")

    return setup


UNSPEAKABLE = ["?!", "\u2014", "..."]


def unspeakable_sentences(c: Ctx) -> None:
    """Real clips whose sentences normalise to nothing."""
    rows = [r.split("\t") for r in good_rows(c, len(UNSPEAKABLE))]
    lines = [f"{spk}\t{name}\t{text}\n" for (spk, name, _), text in zip(rows, UNSPEAKABLE,
                                                                        strict=True)]
    (c.tmp / "train.tsv").write_text(TSV_HEADER + "".join(lines), encoding="utf-8")


def config_without(key: str) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        lines = SMALL_CPU.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith(f"{key}:")]
        assert len(kept) == len(lines) - 1
        (c.tmp / "small_cpu.yaml").write_text("".join(kept), encoding="utf-8")

    return setup


def truncated_checkpoint(c: Ctx) -> None:
    data = c.ckpt.read_bytes()
    (c.tmp / "half.ckpt").write_bytes(data[: len(data) // 2])


def other_architecture_checkpoint(c: Ctx) -> None:
    """small_cpu with output_neurons 40 instead of 32."""
    overrides = {"output_neurons": 40, "output_folder": str(c.tmp / "hp")}
    hp = config_file.load_hparams(SMALL_CPU, overrides)
    modules = torch.nn.ModuleDict(hp["modules"])
    weights.init_norm_stats(modules, hp["n_mels"])
    weights.save_checkpoint(weights.model_state_dict(modules), c.tmp / "out40.ckpt")


class Payload:
    """Pickles as a call that creates ``marker``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def malicious_checkpoint(c: Ctx) -> None:
    torch.save({"enc.weight": Payload(c.tmp / "pwned")}, c.tmp / "evil.ckpt")
    # The payload is live: loading such a file unsafely does run it.
    torch.save({"x": Payload(c.tmp / "proof")}, c.tmp / "proof.ckpt")
    torch.load(c.tmp / "proof.ckpt", weights_only=False)
    assert (c.tmp / "proof").exists()


def marker_not_created(c: Ctx) -> None:
    assert not (c.tmp / "pwned").exists(), "the checkpoint's pickled code ran"


def busy_port(c: Ctx) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", c.port))
    s.listen()
    c.keep.append(s)


def regular_file(c: Ctx) -> None:
    (c.tmp / "file").write_text("a regular file, not a folder\n")


CORRUPT = random.Random(0).randbytes(4096)

CASES = [
    # -- client: training data ---------------------------------------------------------------------
    Case("tsv_missing_file", client("--tr_path", "{tmp}/nope.tsv"),
         ("--tr_path", "{tmp}/nope.tsv", "no such TSV file")),
    Case("tsv_missing_in_folder", client("--tr_path", "{tmp}"),
         ("--tr_path", "{tmp}/train_0.tsv", "no such TSV file")),
    Case("tsv_empty", client("--tr_path", "{tmp}/train.tsv"),
         ("{tmp}/train.tsv", "empty TSV file"), write("train.tsv", b"")),
    Case("tsv_no_path_column", client("--tr_path", "{tmp}/train.tsv"),
         ("{tmp}/train.tsv", "no 'path' column"),
         write("train.tsv", "client_id\tfile\tsentence\nspk\ta.mp3\tOne.\n")),
    Case("tsv_no_sentence_column", client("--tr_path", "{tmp}/train.tsv"),
         ("{tmp}/train.tsv", "no 'sentence' column"),
         write("train.tsv", "client_id\tpath\ttext\nspk\ta.mp3\tOne.\n")),
    Case("clips_all_missing", client("--tr_path", "{tmp}/train.tsv"),
         ("{tmp}/train.tsv", "all 2 clips missing"),
         write("train.tsv", TSV_HEADER + "spk\tgone_1.mp3\tOne.\nspk\tgone_2.mp3\tTwo.\n")),
    Case("clips_all_empty", client("--data_path", "{tmp}/cv", "--tr_path", "{tmp}/cv/train.tsv"),
         ("{tmp}/cv/train.tsv", "2 audio empty/unreadable, e.g. empty_1.mp3"),
         clip_folder({"empty_1.mp3": b"", "empty_2.mp3": b""})),
    Case("clips_all_corrupt", client("--data_path", "{tmp}/cv", "--tr_path", "{tmp}/cv/train.tsv"),
         ("{tmp}/cv/train.tsv", "1 audio empty/unreadable, e.g. random_bytes.mp3"),
         clip_folder({"random_bytes.mp3": CORRUPT})),
    Case("clips_all_not_audio",
         client("--data_path", "{tmp}/cv", "--tr_path", "{tmp}/cv/train.tsv"),
         ("{tmp}/cv/train.tsv", "1 audio empty/unreadable, e.g. notes.wav"),
         clip_folder({"notes.wav": b"this is a text file, not audio\n"})),
    Case("sentences_all_unspeakable", client("--tr_path", "{tmp}/train.tsv"),
         ("{tmp}/train.tsv", "3 empty sentences"),
         unspeakable_sentences),
    # -- client: config, checkpoint, tokenizer -----------------------------------------------------
    Case("config_missing", client("--config_path", "{tmp}", "--config_file", "nope.yaml"),
         ("{tmp}/nope.yaml", "config file not found")),
    Case("config_invalid_yaml", client("--config_path", "{tmp}", "--config_file", "bad.yaml"),
         ("{tmp}/bad.yaml", "invalid YAML, line 2"),
         write("bad.yaml", "seed: [1, 2\nlr: : :\n")),
    Case("config_missing_key",
         client("--config_path", "{tmp}", "--config_file", "small_cpu.yaml"),
         ("{tmp}/small_cpu.yaml", "missing key 'output_neurons'"),
         config_without("output_neurons")),
    Case("config_missing_unreferenced_key",
         client("--config_path", "{tmp}", "--config_file", "small_cpu.yaml"),
         ("{tmp}/small_cpu.yaml", "missing key 'token_type'"), config_without("token_type")),
    Case("pretrained_missing", client("--pre_train_model_path", "{tmp}/nope.ckpt"),
         ("--pre_train_model_path", "{tmp}/nope.ckpt", "no such file")),
    Case("pretrained_truncated", tiny_client("--pre_train_model_path", "{tmp}/half.ckpt"),
         ("{tmp}/half.ckpt", "truncated or corrupt"), truncated_checkpoint),
    Case("pretrained_other_architecture",
         tiny_client("--pre_train_model_path", "{tmp}/out40.ckpt"),
         ("{tmp}/out40.ckpt", "ctc_lin.w.weight", "expected shape (32, 128), got (40, 128)"),
         other_architecture_checkpoint),
    Case("pretrained_malicious_pickle", tiny_client("--pre_train_model_path", "{tmp}/evil.ckpt"),
         ("{tmp}/evil.ckpt", "refused", "nothing in it was run"), malicious_checkpoint,
         marker_not_created),
    Case("tokenizer_missing", client("--tokenizer_path", "{tmp}/nope.model"),
         ("--tokenizer_path", "{tmp}/nope.model", "no such file")),
    Case("tokenizer_not_sentencepiece", tiny_client("--tokenizer_path", "{tmp}/tok.model"),
         ("{tmp}/tok.model", "not a SentencePiece model"),
         write("tok.model", "this is not a SentencePiece model\n")),
    # -- client: flags and environment -------------------------------------------------------------
    Case("client_save_path_under_file", client("--save_path", "{tmp}/file/sub"),
         ("--save_path", "{tmp}/file/sub", "not writable"), regular_file),
    Case("client_data_path_missing", client("--data_path", "{tmp}/nope"),
         ("--data_path", "{tmp}/nope", "no such folder")),
    Case("server_address_without_port", client("--server_address", "localhost"),
         ("--server_address", "'localhost'", "HOST:PORT")),
    Case("root_certificates_missing", client("--root_certificates", "{tmp}/ca.crt"),
         ("--root_certificates", "{tmp}/ca.crt", "no such file")),
    Case("server_unreachable", tiny_client("--max_wait", "3"),
         ("--server_address", "127.0.0.1:{port}", "unreachable")),
    # -- server: flags and environment -------------------------------------------------------------
    Case("weight_strategy_unknown", server("--weight_strategy", "median"),
         ("--weight_strategy", "median")),
    Case("rounds_zero", server("--rounds", "0"), ("--rounds", "at least 1")),
    Case("local_epochs_zero", server("--local_epochs", "0"), ("--local_epochs", "at least 1")),
    Case("min_fit_above_available",
         server("--min_fit_clients", "3", "--min_available_clients", "2"),
         ("--min_fit_clients (3)", "--min_available_clients (2)")),
    Case("fraction_evaluate_2", server("--fraction_evaluate", "2"),
         ("--fraction_evaluate", "[0, 1]")),
    Case("extra_test_malformed", server("--extra_test", "nope"),
         ("--extra_test", "'nope'", "NAME=TSV")),
    Case("certificates_missing",
         server("--certificates", "{tmp}/ca.crt", "{tmp}/server.pem", "{tmp}/server.key"),
         ("--certificates", "{tmp}/ca.crt", "no such file")),
    Case("port_in_use", server(), ("--server_address", "127.0.0.1:{port}", "already in use"),
         busy_port),
    Case("server_data_path_missing", server("--data_path", "{tmp}/nope"),
         ("--data_path", "{tmp}/nope", "no such folder")),
    Case("server_save_path_under_file", server("--save_path", "{tmp}/file/sub"),
         ("--save_path", "{tmp}/file/sub", "not writable"), regular_file),
    Case("server_test_tsv_missing", server("--test_path", "{tmp}/test.tsv"),
         ("--test_path", "{tmp}/test.tsv", "no such file")),
    # -- pre-training and data preparation scripts -------------------------------------------------
    Case("pretrain_train_tsv_missing",
         script("scripts/pretrain.py", "--train_tsv", "{tmp}/nope.tsv", "--out", "{tmp}/out"),
         ("{tmp}/nope.tsv", "no such TSV file")),
    Case("prepare_tsv_not_utf8",
         script("common_voice_prepare.py", "--data_folder", "{data}", "--tsv", "{tmp}/t.tsv",
                "--csv", "{tmp}/t.csv"),
         ("{tmp}/t.tsv", "not UTF-8"),
         write("t.tsv", TSV_HEADER.encode() + "spk\ta.mp3\tCaf\xe9.\n".encode("latin-1"))),
]


# ---- running them ------------------------------------------------------------------------------
@dataclass
class Outcome:
    ctx: Ctx
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def report(self) -> str:
        return (f"exit {self.returncode} after {self.seconds:.1f}s\n--- stderr ---\n"
                f"{self.stderr[-4000:]}\n--- stdout ---\n{self.stdout[-1500:]}")


def error_lines(stderr: str) -> list[str]:
    """The lines meant for the user; library noise (warnings, logs, codec notes) is ignored."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def run_concurrently(jobs: dict[str, Callable[[], Outcome]]) -> dict[str, Outcome]:
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


def timed(cmd: list[str], ctx: Ctx) -> Outcome:
    started = time.monotonic()
    try:
        result = run_cli(cmd, timeout=240)
    finally:
        for resource in ctx.keep:
            resource.close()
    return Outcome(ctx, result.returncode, result.stdout, result.stderr,
                   time.monotonic() - started)


@pytest.fixture(scope="module")
def model_ckpt(tmp_path_factory) -> Path:
    """A real small_cpu checkpoint (fresh weights, normalisation statistics included)."""
    out = tmp_path_factory.mktemp("ckpt")
    hp = config_file.load_hparams(SMALL_CPU, {"output_folder": str(out / "hp")})
    modules = torch.nn.ModuleDict(hp["modules"])
    weights.init_norm_stats(modules, hp["n_mels"])
    weights.save_checkpoint(weights.model_state_dict(modules), out / "model.ckpt")
    weights.load_model_file(modules, out / "model.ckpt")  # the intact file loads
    return out / "model.ckpt"


@pytest.fixture(scope="module")
def data(small_data: Path) -> Path:
    subset_tsv(small_data / "train_0.tsv", small_data / "tiny.tsv", 4)
    return small_data


def odd_audio_folder(folder: Path, data: Path) -> tuple[Path, list[str]]:
    """clips at 8 kHz mono (WAV) and 44.1 kHz stereo (FLAC) made from real clips, plus bad ones.

    Returns the folder and the bad clips' names; ``good.tsv`` lists the good clips only,
    ``mixed.tsv`` the good and the bad ones.
    """
    clips = folder / "clips"
    clips.mkdir(parents=True)
    good = []
    for k, row in enumerate(good_rows(Ctx(data, folder, 0, Path()), 4)):
        spk, name, sentence = row.split("\t")
        if k % 2 == 0:
            wav = audio_data.load_audio(str(data / "clips" / name), 8000).numpy()
            new = f"mono8k_{k}.wav"
            sf.write(clips / new, wav, 8000)
        else:
            wav = audio_data.load_audio(str(data / "clips" / name), 44100).numpy()
            new = f"stereo44k_{k}.flac"
            sf.write(clips / new, np.stack([wav, 0.5 * wav], axis=1), 44100)
        good.append(f"{spk}\t{new}\t{sentence}")
    (clips / "empty.mp3").write_bytes(b"")
    (clips / "random_bytes.mp3").write_bytes(CORRUPT)
    (clips / "notes.wav").write_text("this is a text file, not audio\n")
    bad_names = ["missing_clip.mp3", "empty.mp3", "random_bytes.mp3", "notes.wav"]
    bad = [f"spk\t{name}\tOne two." for name in bad_names]
    (folder / "good.tsv").write_text(TSV_HEADER + "\n".join(good) + "\n")
    mixed = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], good[3]]
    (folder / "mixed.tsv").write_text(TSV_HEADER + "\n".join(mixed) + "\n")
    return folder, bad_names


def _selected(request: pytest.FixtureRequest) -> tuple[list[Case], bool]:
    """The cases (and whether the pretrain run) the tests chosen in this session need."""
    here = Path(__file__).resolve()
    cases, pretrain = {}, False
    for item in request.session.items:
        if Path(str(item.fspath)).resolve() != here:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        if isinstance(params.get("case"), Case):
            cases[params["case"].id] = params["case"]
        pretrain |= "pretrain_run" in getattr(item, "fixturenames", ())
    return list(cases.values()), pretrain


@pytest.fixture(scope="module")
def outcomes(request, data: Path, model_ckpt: Path, tmp_path_factory) -> dict[str, Outcome]:
    """Set up and run every selected case (and the pretrain run), a few at a time."""
    cases, pretrain = _selected(request)
    jobs: dict[str, Callable[[], Outcome]] = {}
    if pretrain:
        folder, _ = odd_audio_folder(tmp_path_factory.mktemp("odd"), data)
        ctx = Ctx(data, folder, 0, model_ckpt, keep=[])
        cmd = [PY, "scripts/pretrain.py", "--data_path", str(folder),
               "--train_tsv", str(folder / "mixed.tsv"), "--dev_tsv", str(folder / "good.tsv"),
               "--tokenizer_path", str(data / "train.tsv"), "--epochs", "1",
               "--out", str(folder / "out"), "--num_threads", "1"]
        jobs["pretrain"] = lambda cmd=cmd, ctx=ctx: timed(cmd, ctx)
    for case in cases:
        ctx = Ctx(data, tmp_path_factory.mktemp(case.id), free_port(), model_ckpt)
        if case.setup is not None:
            case.setup(ctx)
        jobs[case.id] = lambda case=case, ctx=ctx: timed(case.cmd(ctx), ctx)
    results = run_concurrently(jobs)
    if os.environ.get("BAD_INPUT_TIMES"):
        for key, out in sorted(results.items(), key=lambda kv: -kv[1].seconds):
            print(f"{out.seconds:6.1f}s  exit {out.returncode}  {key}  {error_lines(out.stderr)}")
    return results


@pytest.fixture
def pretrain_run(outcomes: dict[str, Outcome]) -> Outcome:
    return outcomes["pretrain"]


# ---- the tests ---------------------------------------------------------------------------------
def test_enough_cases() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, outcomes: dict[str, Outcome]) -> None:
    out = outcomes[case.id]
    errors = error_lines(out.stderr)
    assert out.returncode == 2, out.report()
    assert len(errors) == 1, out.report()
    for fragment in case.expect:
        assert out.ctx.fmt(fragment) in errors[0], out.report()
    assert "Traceback" not in out.stderr, out.report()
    if case.check is not None:
        case.check(out.ctx)


def test_server_unreachable_gives_up_soon(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["server_unreachable"]
    assert out.returncode == 2, out.report()
    assert out.seconds < 60, out.report()  # import + model build + --max_wait 3


def test_debug_shows_the_traceback(data: Path, tmp_path: Path) -> None:
    cmd = client_cmd(data, tmp_path / "out", free_port(), 0, "--tr_path",
                     str(tmp_path / "nope.tsv"), "--debug")
    result = run_cli(cmd, timeout=120)
    message = f"--tr_path {tmp_path / 'nope.tsv'}: no such TSV file"
    assert result.returncode == 2, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert f"UsageError: {message}" in result.stderr
    assert error_lines(result.stderr) == [f"error: {message}"]


def test_odd_audio_is_resampled_and_downmixed(pretrain_run: Outcome) -> None:
    """8 kHz mono WAV and 44.1 kHz stereo FLAC clips train like the 48 kHz MP3s."""
    out = pretrain_run
    assert out.returncode == 0, out.report()
    assert error_lines(out.stderr) == [], out.report()
    assert "pretrain epoch 1: 4 samples" in out.stdout, out.report()
    assert (out.ctx.tmp / "out" / "model.ckpt").is_file()


def test_odd_audio_loads_as_mono_16k(tmp_path: Path) -> None:
    t = np.arange(8000 * 2) / 8000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(tmp_path / "mono8k.wav", tone, 8000)
    t44 = np.arange(44100 * 2) / 44100
    tone44 = (0.3 * np.sin(2 * np.pi * 440 * t44)).astype(np.float32)
    sf.write(tmp_path / "stereo44k.flac", np.stack([tone44, -0.5 * tone44], axis=1), 44100)
    for name in ("mono8k.wav", "stereo44k.flac"):
        signal = audio_data.load_audio(str(tmp_path / name), 16000)
        assert signal.dim() == 1
        assert abs(signal.numel() - 32000) <= 2


def test_bad_clips_among_good_ones_are_skipped_with_a_warning(pretrain_run: Outcome) -> None:
    out = pretrain_run
    assert out.returncode == 0, out.report()
    mixed = str(out.ctx.tmp / "mixed.tsv")
    warnings = [line for line in out.stderr.splitlines() if "WARNING" in line and mixed in line]
    missing = [line for line in warnings if "1 audio files missing" in line]
    unreadable = [line for line in warnings if "3 audio files empty or unreadable" in line]
    assert len(missing) == 1 and "missing_clip.mp3" in missing[0], out.report()
    assert len(unreadable) == 1, out.report()
    for name in ("empty.mp3", "random_bytes.mp3", "notes.wav"):
        assert name in unreadable[0], out.report()


# ---- a full disk, in-process -------------------------------------------------------------------
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((64, 64), value), "n": torch.tensor(3)}


@pytest.mark.parametrize("fails", ["torch.save", "os.fsync"])
def test_disk_full_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    path = tmp_path / "global_model.ckpt"
    weights.save_checkpoint(_state(1.0), path)
    before = path.read_bytes()
    if fails == "torch.save":
        monkeypatch.setattr(weights.torch, "save", _no_space)
    else:
        monkeypatch.setattr(atomic_file.os, "fsync", _no_space)
    with pytest.raises(OSError) as info:
        weights.save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert torch.equal(weights.load_checkpoint(path)["w"], _state(1.0)["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_model.ckpt"]


@pytest.mark.parametrize("mode", ["wb", "w"])
def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path, mode: str) -> None:
    """Whatever fails inside the write (here the content itself), the old file stays whole."""
    path = tmp_path / "prepared.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_file.atomic_write(path, mode) as f:
            f.write(b"new" if mode == "wb" else "new")
            raise RuntimeError("half-way")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["prepared.csv"]
    with atomic_file.atomic_write(path, mode) as f:
        f.write(b"new\n" if mode == "wb" else "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["prepared.csv"]


@pytest.mark.parametrize("failing_fsync", [1, 2], ids=["checkpoint", "history"])
def test_disk_full_during_a_round_keeps_the_last_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_fsync: int
) -> None:
    """ENOSPC while writing round 2's checkpoint (1st fsync) or its history (2nd fsync)."""
    keys = ["w", "n"]
    store = history.RunStore(tmp_path, keys)
    rows = [{"round": 1}]
    store.save_round(1, [v.numpy() for v in _state(1.0).values()], rows)
    before = {p: p.read_bytes() for p in (tmp_path / "global_model.ckpt", store.history_file)}
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == failing_fsync:
            _no_space()
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        store.save_round(2, [v.numpy() for v in _state(2.0).values()], [*rows, {"round": 2}])
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    for p, content in before.items():
        assert p.read_bytes() == content, p
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    rows_back, state = store.load_latest()
    assert [r["round"] for r in rows_back] == [1]
    assert torch.equal(state["w"], _state(1.0)["w"])


def test_disk_full_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "final_model.ckpt"

    def run(args):
        monkeypatch.setattr(atomic_file.os, "fsync", _no_space)
        weights.save_checkpoint(_state(1.0), path)

    assert cli.run_main(run, argparse.Namespace(debug=False)) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: cannot write {path} (No space left on device)"]
    monkeypatch.undo()
    # A bare OSError from anywhere else is one line too, with its file named.
    bare = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json"))
    assert cli.run_main(lambda a: (_ for _ in ()).throw(bare), argparse.Namespace()) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert str(tmp_path / "x.json") in lines[0] and "No space left on device" in lines[0]

