"""Every bad input ends in ONE line ``error: ...`` on stderr naming the file or flag, exit status 2.

Each README "Bad input" row is tested (``test_every_readme_row_is_tested``), and each case's
expected message is the README row's text itself (``<file>``, ``<folder>``, ``<data>``,
``<clip id>`` and ``PORT`` stand for any text), plus the concrete paths the line must name.

Most cases run in this process, the way the program meets them:

- flag and file checks (``FLAG_CASES``): the program's own parser and ``run`` through
  :func:`cli.run_main`, which prints the line and returns the exit status. The model and
  federation builders are replaced by a tripwire, so a check that lets a case through fails the
  test instead of starting a run.
- bad data, configs, checkpoints and tokenizers (``LIBRARY_CASES``): the library function the
  program calls there (``prepare_tsv``, ``init_model``, ``load_model_file``, ``load_tokenizer``,
  ``client.connect``) must raise a :class:`errors.UserError` (which :func:`cli.is_user_error`
  accepts) whose one line is the README's.

Real processes remain only for what a process shows (marked ``slow``): the one-line error and
exit 2 through ``main_and_exit`` of ``server.py``, the ``--debug`` traceback of ``client.py``, and
one ``scripts/pretrain.py --epochs 1`` run on odd audio (resampled, downmixed, bad clips skipped
with a warning). A full disk is simulated in-process.
"""

from __future__ import annotations

import argparse
import errno
import os
import pathlib
import random
import re
import socket
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT, client_cmd, free_port, run_cli, server_cmd

import client
import common_voice_prepare
import server
import weights
from fedspeech.base import cli
from fedspeech.base import files as atomic_file
from fedspeech.base.errors import UserError
from fedspeech.core.row import RoundRow
from fedspeech.core.settings import GRPC_MAX_MESSAGE_LENGTH
from fedspeech.records import history
from fedspeech.speech import audio as audio_data
from fedspeech.speech import config as config_file
from fedspeech.speech import model as model_setup
from fedspeech.speech import tokenizer
from fedspeech.tools import pretrain

PY = sys.executable
SMALL_CPU = ROOT / "configs" / "small_cpu.yaml"
TSV_HEADER = "client_id\tpath\tsentence\n"
CORRUPT = random.Random(0).randbytes(4096)
PLACEHOLDERS = ("<file>", "<folder>", "<data>", "<clip id>", "PORT")


# ---- the README's table ------------------------------------------------------------------------
def readme_rows() -> dict[str, str]:
    """README "Bad input": each row's case (first column) -> its first code span (the message)."""
    page = (ROOT / "docs" / "bad-input.md").read_text(encoding="utf-8")
    section = page.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] in ("case", "") or set(cells[0]) <= {"-"}:
            continue
        code = re.search(r"`([^`]+)`", line.split("|")[2])
        rows[cells[0]] = code.group(1) if code else cells[1]
    return rows


def template_regex(template: str) -> re.Pattern[str]:
    """A README message as a pattern: the placeholders match any text, the rest literally."""
    pattern = re.escape(template)
    for placeholder in PLACEHOLDERS:
        pattern = pattern.replace(re.escape(placeholder), ".+")
    return re.compile(pattern)


# ---- what a case may refer to ------------------------------------------------------------------
@dataclass
class Ctx:
    """A case's world: ``{data}`` (the shared small data set), ``{tmp}``, ``{port}``."""

    data: Path
    tmp: Path
    port: int
    keep: list = field(default_factory=list)  # resources held open while the case runs

    def fmt(self, text: str) -> str:
        return text.format(data=self.data, tmp=self.tmp, port=self.port)


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


def good_rows(data: Path, n: int = 3) -> list[str]:
    """Rows (client_id, path, sentence) of real clips from the small data set."""
    lines = (data / "train_0.tsv").read_text(encoding="utf-8").splitlines()
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
    rows = [r.split("\t") for r in good_rows(c.data, len(UNSPEAKABLE))]
    lines = [f"{spk}\t{name}\t{text}\n"
             for (spk, name, _), text in zip(rows, UNSPEAKABLE, strict=True)]
    (c.tmp / "train.tsv").write_text(TSV_HEADER + "".join(lines), encoding="utf-8")


def config_without(key: str) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        lines = SMALL_CPU.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith(f"{key}:")]
        assert len(kept) == len(lines) - 1
        (c.tmp / "small_cpu.yaml").write_text("".join(kept), encoding="utf-8")

    return setup


def build_small(out: Path, **overrides: object) -> torch.nn.ModuleDict:
    """The small_cpu model's modules, normalisation statistics initialised (as the programs)."""
    hp = config_file.load_hparams(SMALL_CPU, {"output_folder": str(out), **overrides})
    modules = torch.nn.ModuleDict(hp["modules"])
    weights.init_norm_stats(modules, hp["n_mels"])
    return modules


def truncated_checkpoint(c: Ctx) -> None:
    weights.save_checkpoint(weights.model_state_dict(build_small(c.tmp / "hp")),
                            c.tmp / "whole.ckpt")
    data = (c.tmp / "whole.ckpt").read_bytes()
    (c.tmp / "half.ckpt").write_bytes(data[: len(data) // 2])


def other_architecture_checkpoint(c: Ctx) -> None:
    """small_cpu with output_neurons 40 instead of 32."""
    modules = build_small(c.tmp / "hp", output_neurons=40)
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


# ---- the cases ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    readme: str  # the README row (first column) this case tests
    names: tuple[str, ...] = ()  # templates ({tmp}, {data}, {port}) the line must contain
    setup: Callable[[Ctx], None] | None = None
    check: Callable[[Ctx], None] | None = None  # more assertions afterwards


@dataclass(frozen=True)
class FlagCase(Case):
    """``program.py argv`` in-process: stopped by its checks before anything slow."""

    program: str = "client"  # client | server | pretrain
    argv: tuple[str, ...] = ()  # templates, added to the program's usual small-data flags


@dataclass(frozen=True)
class LibraryCase(Case):
    """The library call the program makes at this step; it must raise a one-line UserError."""

    call: Callable[[Ctx], object] = lambda c: pytest.fail("a LibraryCase needs call=")


def flags(*argv: str, program: str = "client") -> dict[str, object]:
    """A FlagCase's program and the flags it adds."""
    return {"program": program, "argv": argv}


FLAG_CASES = [
    # -- client ------------------------------------------------------------------------------------
    FlagCase("tsv_missing_file", "`client.py --tr_path` names a missing file",
             ("--tr_path {tmp}/nope.tsv",), **flags("--tr_path", "{tmp}/nope.tsv")),
    FlagCase("tsv_missing_in_folder",
             "`client.py --tr_path` is a folder without `train_<cid>.tsv`",
             ("--tr_path {tmp}/train_0.tsv",), **flags("--tr_path", "{tmp}")),
    FlagCase("pretrained_missing", "`--pre_train_model_path` missing",
             ("--pre_train_model_path {tmp}/nope.ckpt",),
             **flags("--pre_train_model_path", "{tmp}/nope.ckpt")),
    FlagCase("tokenizer_missing", "`--tokenizer_path` missing",
             ("--tokenizer_path {tmp}/nope.model",),
             **flags("--tokenizer_path", "{tmp}/nope.model")),
    FlagCase("client_save_path_under_file", "`--save_path` not writable (under a regular file)",
             ("--save_path {tmp}/file/sub",), regular_file,
             **flags("--save_path", "{tmp}/file/sub")),
    FlagCase("client_data_path_missing", "`--data_path` missing", ("--data_path {tmp}/nope",),
             **flags("--data_path", "{tmp}/nope")),
    FlagCase("server_address_without_port", "`--server_address localhost` (no port)",
             **flags("--server_address", "localhost")),
    FlagCase("root_certificates_missing", "`--root_certificates` file missing",
             ("--root_certificates {tmp}/ca.crt",), **flags("--root_certificates", "{tmp}/ca.crt")),
    # -- server ------------------------------------------------------------------------------------
    FlagCase("weight_strategy_unknown", "`--weight_strategy median`",
             **flags("--weight_strategy", "median", program="server")),
    FlagCase("rounds_zero", "`--rounds 0`", **flags("--rounds", "0", program="server")),
    FlagCase("local_epochs_zero", "`--local_epochs 0`",
             **flags("--local_epochs", "0", program="server")),
    FlagCase("min_fit_above_available", "`--min_fit_clients 3 --min_available_clients 2`",
             **flags("--min_fit_clients", "3", "--min_available_clients", "2", program="server")),
    FlagCase("fraction_evaluate_2", "`--fraction_evaluate 2`",
             **flags("--fraction_evaluate", "2", program="server")),
    FlagCase("extra_test_malformed", "`--extra_test nope`",
             **flags("--extra_test", "nope", program="server")),
    FlagCase("server_weighting_without_score_set",
             "`--weight_strategy server_wer` without `--score_path`",
             **flags("--weight_strategy", "server_wer", program="server")),
    FlagCase("krum_too_few_clients", "`--aggregation krum --num_malicious 1` (2 clients a round)",
             **flags("--aggregation", "krum", "--num_malicious", "1", program="server")),
    FlagCase("share_cap_below_one_over_n",
             "`--max_client_share 0.3 --min_fit_clients 3 --min_available_clients 3`",
             **flags("--max_client_share", "0.3", "--min_fit_clients", "3",
                     "--min_available_clients", "3", program="server")),
    FlagCase("clip_not_a_number", "`--clip_update_norm big`",
             **flags("--clip_update_norm", "big", program="server")),
    FlagCase("certificates_missing", "`--certificates` file missing",
             ("--certificates {tmp}/ca.crt",),
             **flags("--certificates", "{tmp}/ca.crt", "{tmp}/server.pem", "{tmp}/server.key",
                  program="server")),
    FlagCase("port_in_use", "port already in use (server)",
             ("--server_address 127.0.0.1:{port}: port {port} ",), busy_port,
             **flags(program="server")),
    FlagCase("server_data_path_missing", "`--data_path` missing", ("--data_path {tmp}/nope",),
             **flags("--data_path", "{tmp}/nope", program="server")),
    FlagCase("server_save_path_under_file",
             "`--save_path` not writable (under a regular file)", ("--save_path {tmp}/file/sub",),
             regular_file, **flags("--save_path", "{tmp}/file/sub", program="server")),
    FlagCase("server_test_tsv_missing", "`--test_path` missing (server)",
             ("--test_path {tmp}/test.tsv",),
             **flags("--test_path", "{tmp}/test.tsv", program="server")),
    # -- pretrain: the TSV is read by init_model's prepare_tsv, before the model is built -------
    FlagCase("pretrain_tr_path_missing", "`pretrain.py --tr_path` missing", ("{tmp}/nope.tsv",),
             **flags("--tr_path", "{tmp}/nope.tsv", program="pretrain")),
    FlagCase("pretrain_tr_path_list_missing", "`pretrain.py --tr_path a.tsv,b.tsv`, one missing",
             ("{tmp}/nope.tsv",),
             **flags("--tr_path", "{data}/train.tsv,{tmp}/nope.tsv", program="pretrain")),
]


def prepare(tsv: str, data: str = "{data}") -> Callable[[Ctx], object]:
    """What init_model does with each TSV: ``prepare_tsv`` into the split's CSV."""
    return lambda c: common_voice_prepare.prepare_tsv(c.fmt(tsv), c.tmp / "out" / "train.csv",
                                                      c.fmt(data))


def init_model_with(config: str) -> Callable[[Ctx], object]:
    return lambda c: model_setup.init_model(c.fmt(config), output_folder=c.tmp / "out",
                                      data_folder=c.data, tokenizer_source=c.data / "train.tsv",
                                      device="cpu")


def load_into_small(ckpt: str) -> Callable[[Ctx], object]:
    """The client's (and server's) ``load_model_file`` into a small_cpu model."""
    return lambda c: weights.load_model_file(build_small(c.tmp / "model"), c.fmt(ckpt))


def connect_for(seconds: float) -> Callable[[Ctx], object]:
    """client.connect to a port nothing listens on, with ``--max_wait seconds``: it must give
    up about then (1 + 2 s of back-off for 3 s), not after Flower's own retries."""
    trainer = types.SimpleNamespace(cid="0")

    def call(c: Ctx) -> None:
        started = time.monotonic()
        try:
            client.connect(client.SpeechBrainClient(trainer), server_address=f"127.0.0.1:{c.port}",
                           max_wait=seconds, grpc_max_message_length=GRPC_MAX_MESSAGE_LENGTH,
                           root_ca=None)
        except UserError:
            assert time.monotonic() - started < seconds + 15, "gave up too late"
            raise

    return call


LIBRARY_CASES = [
    # -- training data (prepare_tsv) ---------------------------------------------------------------
    LibraryCase("tsv_empty", "empty (0-byte) TSV", ("{tmp}/train.tsv",),
                write("train.tsv", b""), call=prepare("{tmp}/train.tsv")),
    LibraryCase("tsv_no_path_column", "TSV without a `path` column", ("{tmp}/train.tsv",),
                write("train.tsv", "client_id\tfile\tsentence\nspk\ta.mp3\tOne.\n"),
                call=prepare("{tmp}/train.tsv")),
    LibraryCase("tsv_no_sentence_column", "TSV without a `sentence` column", ("{tmp}/train.tsv",),
                write("train.tsv", "client_id\tpath\ttext\nspk\ta.mp3\tOne.\n"),
                call=prepare("{tmp}/train.tsv")),
    LibraryCase("tsv_not_utf8", "TSV that is not UTF-8", ("{tmp}/t.tsv",),
                write("t.tsv", TSV_HEADER.encode() + "spk\ta.mp3\tCaf\xe9.\n".encode("latin-1")),
                call=prepare("{tmp}/t.tsv")),
    LibraryCase("clips_all_missing", "every clip of the TSV missing",
                ("{tmp}/train.tsv", "under {data}/clips"),
                write("train.tsv", TSV_HEADER + "spk\tgone_1.mp3\tOne.\nspk\tgone_2.mp3\tTwo.\n"),
                call=prepare("{tmp}/train.tsv")),
    LibraryCase("clips_all_empty", "every clip empty (0 bytes)", ("{tmp}/cv/train.tsv",),
                clip_folder({"empty_1.mp3": b"", "empty_2.mp3": b""}),
                call=prepare("{tmp}/cv/train.tsv", "{tmp}/cv")),
    LibraryCase("clips_all_corrupt", "every clip corrupt (random bytes named `.mp3`)",
                ("{tmp}/cv/train.tsv",), clip_folder({"random_bytes.mp3": CORRUPT}),
                call=prepare("{tmp}/cv/train.tsv", "{tmp}/cv")),
    LibraryCase("clips_all_not_audio", "every clip not audio (a text file named `.wav`)",
                ("{tmp}/cv/train.tsv",),
                clip_folder({"notes.wav": b"this is a text file, not audio\n"}),
                call=prepare("{tmp}/cv/train.tsv", "{tmp}/cv")),
    LibraryCase("sentences_all_unspeakable",
                "every sentence normalises to nothing (`?!`, `—`, `...`)", ("{tmp}/train.tsv",),
                unspeakable_sentences, call=prepare("{tmp}/train.tsv")),
    # -- config (init_model reads it first) --------------------------------------------------------
    LibraryCase("config_missing", "config file missing", ("{tmp}/nope.yaml",),
                call=init_model_with("{tmp}/nope.yaml")),
    LibraryCase("config_invalid_yaml", "config file is not valid YAML", ("{tmp}/bad.yaml",),
                write("bad.yaml", "seed: [1, 2\nlr: : :\n"),
                call=init_model_with("{tmp}/bad.yaml")),
    LibraryCase("config_missing_key",
                "config lacks a key another key refers to (`output_neurons`)",
                ("{tmp}/small_cpu.yaml",), config_without("output_neurons"),
                call=init_model_with("{tmp}/small_cpu.yaml")),
    LibraryCase("config_missing_unreferenced_key",
                "config lacks a key the code needs (`token_type`)", ("{tmp}/small_cpu.yaml",),
                config_without("token_type"), call=init_model_with("{tmp}/small_cpu.yaml")),
    LibraryCase("config_speaker_norm_std",
                "`real_cpu.yaml` (`norm_type: speaker`) with `--override norm_std=True`",
                (str(ROOT / "configs" / "real_cpu.yaml"),),
                call=lambda c: config_file.load_hparams(
                    ROOT / "configs" / "real_cpu.yaml",
                    {"output_folder": str(c.tmp / "out"), "norm_std": True})),
    # -- checkpoint, tokenizer ---------------------------------------------------------------------
    LibraryCase("pretrained_truncated", "pre-trained checkpoint truncated", ("{tmp}/half.ckpt",),
                truncated_checkpoint, call=load_into_small("{tmp}/half.ckpt")),
    LibraryCase("pretrained_other_architecture", "pre-trained checkpoint of another architecture",
                ("{tmp}/out40.ckpt",), other_architecture_checkpoint,
                call=load_into_small("{tmp}/out40.ckpt")),
    LibraryCase("pretrained_malicious_pickle", "malicious pickle as checkpoint",
                ("{tmp}/evil.ckpt",), malicious_checkpoint, marker_not_created,
                call=load_into_small("{tmp}/evil.ckpt")),
    LibraryCase("tokenizer_not_sentencepiece",
                "`--tokenizer_path` file is not a SentencePiece model",
                ("{tmp}/tok.model",), write("tok.model", "this is not a SentencePiece model\n"),
                call=lambda c: tokenizer.load_tokenizer(c.tmp / "tok.model", c.tmp / "tk",
                                                        vocab_size=32)),
    # -- the server is unreachable -----------------------------------------------------------------
    LibraryCase("server_unreachable", "server unreachable (client, `--max_wait 3`)",
                ("--server_address 127.0.0.1:{port}:",), call=connect_for(3)),
]

# Rows tested by a test of their own (not an ``error:`` line of a case above).
OTHER_ROWS = {
    "some clips missing among good ones (not an error)":
        "test_bad_clips_among_good_ones_are_skipped_with_a_warning",
    "some clips empty / corrupt / not audio among good ones (not an error)":
        "test_bad_clips_among_good_ones_are_skipped_with_a_warning",
    "clips at 8 kHz mono (WAV) or 44.1 kHz stereo (FLAC) (not an error)":
        "test_odd_audio_is_resampled_and_downmixed",
    "disk full while saving a checkpoint": "test_disk_full_is_one_line_and_exit_2",
    "any of the above with `--debug`": "test_debug_shows_the_traceback",
}


@pytest.fixture(scope="module")
def rows() -> dict[str, str]:
    return readme_rows()


@pytest.fixture
def ctx(small_data: Path, tmp_path: Path) -> Iterator[Ctx]:
    c = Ctx(small_data, tmp_path, free_port())
    yield c
    for resource in c.keep:
        resource.close()


def assert_one_line(line: str, case: Case, c: Ctx, rows: dict[str, str]) -> None:
    """``line`` is the README row's message, naming this case's files and flags."""
    template = rows[case.readme]
    assert template_regex(template).fullmatch(line), f"{line!r} is not README's {template!r}"
    for name in case.names:
        assert c.fmt(name) in line, (name, line)


# ---- the tests ---------------------------------------------------------------------------------
def test_every_readme_row_is_tested(rows: dict[str, str]) -> None:
    cases = FLAG_CASES + LIBRARY_CASES
    assert len({c.id for c in cases}) == len(cases)
    tested = {c.readme for c in cases} | set(OTHER_ROWS)
    # Rows marked † are tested in process in tests/test_prepare.py (clip paths outside clips/).
    dagger = {row for row in rows if row.endswith("†")}
    prepare_tests = (Path(__file__).parent / "test_prepare.py").read_text()
    assert dagger and "outside_clips" in prepare_tests
    tested |= dagger
    assert sorted(tested - set(rows)) == [], "tests of rows the README does not have"
    assert all(name in globals() for name in OTHER_ROWS.values())
    for case in cases:  # the case's row promises an error line
        assert rows[case.readme].startswith("error: "), case.id


def _too_far(*args: object, **kwargs: object) -> None:
    raise AssertionError("the checks let this case through to building the model")


def run_program(program: str, argv: list[str], monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``program.py argv`` as ``cli.main`` runs it (parse, then ``run``): exit status, stderr.

    The builders of the model and the federation are tripwires, so only the checks run; except
    for pretrain, whose TSV is checked inside ``init_model`` before any model is built.
    """
    module = {"client": client, "server": server, "pretrain": pretrain}[program]
    monkeypatch.setattr(server, "build_federation", _too_far)
    if program == "client":
        monkeypatch.setattr(model_setup, "init_model", _too_far)  # client.run imports it late
    capsys.readouterr()
    try:
        args = module.build_parser().parse_args(argv)
    except SystemExit as done:
        return done.code, capsys.readouterr().err
    return cli.run_main(module.run, args), capsys.readouterr().err


def usual_argv(program: str, c: Ctx) -> list[str]:
    """The small-data command line the tests' real runs use, without ``python <program>.py``."""
    if program == "server":
        return server_cmd(c.data, c.tmp / "out", c.port)[2:]
    if program == "client":
        return client_cmd(c.data, c.tmp / "out", c.port, 0)[2:]
    return ["--data_path", str(c.data), "--tokenizer_path", str(c.data / "train.tsv"),
            "--save_path", str(c.tmp / "out"), "--epochs", "1"]


@pytest.mark.parametrize("case", FLAG_CASES, ids=[c.id for c in FLAG_CASES])
def test_bad_flag(case: FlagCase, ctx: Ctx, rows: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> None:
    if case.setup is not None:
        case.setup(ctx)
    argv = usual_argv(case.program, ctx) + [ctx.fmt(a) for a in case.argv]
    code, err = run_program(case.program, argv, monkeypatch, capsys)
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert_one_line(lines[0], case, ctx, rows)


# server_unreachable: grpc's connectivity thread may trip over the closed channel (a process
# would have exited by then).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("case", LIBRARY_CASES, ids=[c.id for c in LIBRARY_CASES])
def test_bad_file(case: LibraryCase, ctx: Ctx, rows: dict[str, str],
                  capsys: pytest.CaptureFixture[str]) -> None:
    if case.setup is not None:
        case.setup(ctx)
    with pytest.raises(UserError) as info:
        case.call(ctx)
    assert cli.is_user_error(info.value)
    assert_one_line(f"error: {cli.one_line(info.value)}", case, ctx, rows)
    if case.check is not None:
        case.check(ctx)
    # What the program then prints: that line, and nothing else, with exit status 2.
    capsys.readouterr()
    assert cli.run_main(lambda _: (_ for _ in ()).throw(info.value),
                        argparse.Namespace(debug=False)) == 2
    assert capsys.readouterr().err == f"error: {cli.one_line(info.value)}\n"


def test_prepare_script_not_utf8(ctx: Ctx, rows: dict[str, str],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """common_voice_prepare.py's own entry point prints the same one line, exit status 2."""
    write("t.tsv", TSV_HEADER.encode() + "spk\ta.mp3\tCaf\xe9.\n".encode("latin-1"))(ctx)
    code = common_voice_prepare.main(["--data_path", str(ctx.data), "--tsv",
                                      str(ctx.tmp / "t.tsv"), "--csv", str(ctx.tmp / "t.csv")])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1, lines
    case = next(c for c in LIBRARY_CASES if c.id == "tsv_not_utf8")
    assert_one_line(lines[0], case, ctx, rows)


# ---- real processes: what only a process shows -------------------------------------------------
def error_lines(stderr: str) -> list[str]:
    """The lines meant for the user; library noise (warnings, logs, codec notes) is ignored."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_server_process_error_is_one_line(small_data: Path, tmp_path: Path) -> None:
    """The whole path through ``main_and_exit``: one line, exit status 2, no traceback."""
    port = free_port()
    result = run_cli(server_cmd(small_data, tmp_path / "out", port, "--rounds", "0"), timeout=120)
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == ["error: --rounds must be at least 1, got 0"]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_bad_tsv_is_reported_before_the_model_in_a_few_lines(tmp_path: Path) -> None:
    """Errors first: the client checks its TSV before it builds a model, so the terminal shows
    the skipped clip's warning and the error, not SpeechBrain's model statistics."""
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    for name in ("train_0.tsv", "dev.tsv"):
        (data / name).write_text("client_id\tpath\tsentence\nspk\tnope.mp3\tHello\n")
    cmd = client_cmd(data, tmp_path / "out", free_port(), 0, "--tokenizer_path",
                     str(ROOT / "temp_dataset" / "train.tsv"))
    result = run_cli(cmd, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) <= 3, lines
    assert lines[-1] == (f"error: {data / 'train_0.tsv'}: no usable rows out of 1 (all 1 clips "
                         f"missing under {data / 'clips'})")
    assert not (tmp_path / "out" / "client_0" / "hyperparams.yaml").exists()  # no model built


@pytest.mark.slow
def test_debug_shows_the_traceback(small_data: Path, tmp_path: Path) -> None:
    cmd = client_cmd(small_data, tmp_path / "out", free_port(), 0, "--tr_path",
                     str(tmp_path / "nope.tsv"), "--debug")
    result = run_cli(cmd, timeout=120)
    message = f"--tr_path {tmp_path / 'nope.tsv'}: no such TSV file"
    assert result.returncode == 2, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert f"UsageError: {message}" in result.stderr
    assert error_lines(result.stderr) == [f"error: {message}"]


def odd_audio_folder(folder: Path, data: Path) -> tuple[Path, list[str]]:
    """clips at 8 kHz mono (WAV) and 44.1 kHz stereo (FLAC) made from real clips, plus bad ones.

    Returns the folder and the bad clips' names; ``good.tsv`` lists the good clips only,
    ``mixed.tsv`` the good and the bad ones.
    """
    clips = folder / "clips"
    clips.mkdir(parents=True)
    good = []
    for k, row in enumerate(good_rows(data, 4)):
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


@dataclass
class PretrainRun:
    folder: Path
    returncode: int
    stdout: str
    stderr: str

    def report(self) -> str:
        return (f"exit {self.returncode}\n--- stderr ---\n{self.stderr[-4000:]}\n"
                f"--- stdout ---\n{self.stdout[-1500:]}")


@pytest.fixture(scope="module")
def pretrain_run(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> PretrainRun:
    """One real ``scripts/pretrain.py --epochs 1`` on odd and bad clips (shared by two tests)."""
    folder, _ = odd_audio_folder(tmp_path_factory.mktemp("odd"), small_data)
    result = run_cli([PY, "scripts/pretrain.py", "--data_path", str(folder),
                      "--tr_path", str(folder / "mixed.tsv"),
                      "--dev_path", str(folder / "good.tsv"),
                      "--tokenizer_path", str(small_data / "train.tsv"), "--epochs", "1",
                      "--save_path", str(folder / "out"), "--num_threads", "1"], timeout=300)
    return PretrainRun(folder, result.returncode, result.stdout, result.stderr)


@pytest.mark.slow
@pytest.mark.xdist_group("pretrain_run")  # one worker: the module's pretrain run is made once
def test_odd_audio_is_resampled_and_downmixed(pretrain_run: PretrainRun) -> None:
    """8 kHz mono WAV and 44.1 kHz stereo FLAC clips train like the 48 kHz MP3s."""
    out = pretrain_run
    assert out.returncode == 0, out.report()
    assert error_lines(out.stderr) == [], out.report()
    assert "pretrain epoch 1: 4 samples" in out.stdout, out.report()
    assert (out.folder / "out" / "model.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.xdist_group("pretrain_run")
def test_bad_clips_among_good_ones_are_skipped_with_a_warning(pretrain_run: PretrainRun) -> None:
    out = pretrain_run
    assert out.returncode == 0, out.report()
    mixed = str(out.folder / "mixed.tsv")
    warnings = [line for line in out.stderr.splitlines() if "WARNING" in line and mixed in line]
    missing = [line for line in warnings if "1 audio files missing" in line]
    unreadable = [line for line in warnings if "3 audio files empty or unreadable" in line]
    assert len(missing) == 1 and "missing_clip.mp3" in missing[0], out.report()
    assert len(unreadable) == 1, out.report()
    for name in ("empty.mp3", "random_bytes.mp3", "notes.wav"):
        assert name in unreadable[0], out.report()


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
    with pytest.raises(UserError) as info:
        weights.save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    assert cli.is_user_error(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
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


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name an fd")
@pytest.mark.parametrize("failing", ["round_0002.ckpt", "history.json"],
                         ids=["checkpoint", "history"])
def test_disk_full_during_a_round_keeps_the_last_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """ENOSPC while writing round 2's checkpoint or its history (the fsync of that temp file)."""
    keys = ["w", "n"]
    store = history.RunStore(tmp_path, keys)
    rows = [RoundRow(1)]
    store.save_round(1, [v.numpy() for v in _state(1.0).values()], rows)
    before = {p: p.read_bytes() for p in (tmp_path / "global_model.ckpt", store.history_file)}
    failed = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if failing in _fd_path(fd):  # the temp file's name holds the target's
            failed.append(_fd_path(fd))
            _no_space()
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises((OSError, UserError)) as caught:
        store.save_round(2, [v.numpy() for v in _state(2.0).values()], [*rows, RoundRow(2)])
    monkeypatch.undo()
    # one line naming the file, not a traceback: history.json's fsync error gets its name too
    assert cli.is_user_error(caught.value) and failing in cli.one_line(caught.value)
    assert len(failed) == 1, failed
    for p, content in before.items():
        assert p.read_bytes() == content, p
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    rows_back, state = store.load_latest()
    assert [r["round"] for r in rows_back] == [1]
    assert torch.equal(state["w"], _state(1.0)["w"])


def test_disk_full_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    rows: dict[str, str],
) -> None:
    path = tmp_path / "final_model.ckpt"

    def run(args):
        monkeypatch.setattr(atomic_file.os, "fsync", _no_space)
        weights.save_checkpoint(_state(1.0), path)

    assert cli.run_main(run, argparse.Namespace(debug=False)) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: cannot write {path} (No space left on device)"]
    assert template_regex(rows["disk full while saving a checkpoint"]).fullmatch(err.strip())
    monkeypatch.undo()
    # A bare OSError from anywhere else is one line too, with its file named.
    bare = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json"))
    assert cli.run_main(lambda a: (_ for _ in ()).throw(bare), argparse.Namespace()) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert str(tmp_path / "x.json") in lines[0] and "No space left on device" in lines[0]
