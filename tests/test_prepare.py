"""Tests for common_voice_prepare: Common Voice TSV -> SpeechBrain CSV."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import common_voice_prepare as cvp
from common_voice_prepare import DataPrepError, normalize_sentence, prepare_tsv

SR = 48000
CLIPS = {"a.mp3": 0.5, "b.wav": 1.0, "c.flac": 1.5, "d.mp3": 2.0}
HEADER = ["client_id", "path", "sentence"]


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    clips = tmp_path / "cv" / "clips"
    clips.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, seconds in CLIPS.items():
        x = (0.1 * rng.standard_normal(int(seconds * SR))).astype("float32")
        sf.write(clips / name, x, SR, format=Path(name).suffix[1:].upper())
    return tmp_path / "cv"


def basic_tsv(data: Path) -> Path:
    rows = [["s1", "a.mp3", "Hello world"], ["s2", "b.wav", "Second one"]]
    return write_tsv(data / "train.tsv", HEADER, rows)


def test_reordered_extra_columns_quotes_and_durations(data: Path, tmp_path: Path) -> None:
    header = ["sentence_id", "path", "sentence_domain", "sentence", "client_id", "variant",
              "segment"]
    rows = [
        ["1", "a.mp3", "", 'He said "two" times.', "spk1", "", ""],
        ["2", "b.wav", "general", "Don\u2019t stop, L'homme!", "", "x", "seg"],
        ["3", "c", "", "Third, clip", "spk3", "", ""],  # no extension -> .mp3 is not there
        ["4", "c.flac", "", "Fourth", "spk4", "", ""],
    ]
    tsv = write_tsv(data / "train.tsv", header, rows)
    # a UTF-8 BOM and blank lines are tolerated
    tsv.write_bytes(b"\xef\xbb\xbf" + tsv.read_bytes().replace(b"\n", b"\n\n", 1))
    out = tmp_path / "save" / "train.csv"
    assert prepare_tsv(tsv, out, data) == 3
    assert out.read_text().splitlines()[0] == "ID,duration,wav,spk_id,wrd"
    got = {row["ID"]: row for row in read_csv(out)}
    assert got["a"]["wrd"] == "HE SAID TWO TIMES"
    assert got["b"]["wrd"] == "DON'T STOP L'HOMME"
    assert got["b"]["spk_id"] == "unknown" and got["a"]["spk_id"] == "spk1"
    for clip_id, name in (("a", "a.mp3"), ("b", "b.wav"), ("c", "c.flac")):
        assert abs(float(got[clip_id]["duration"]) - CLIPS[name]) < 0.05
        assert Path(got[clip_id]["wav"]).is_absolute() and Path(got[clip_id]["wav"]).is_file()


def test_path_without_extension_and_duplicate_ids(data: Path, tmp_path: Path) -> None:
    rows = [["s", "a", "one"], ["s", "a.mp3", "two"], ["s", str(data / "clips" / "a.mp3"), "x"]]
    tsv = write_tsv(data / "t.tsv", HEADER, rows)
    assert prepare_tsv(tsv, tmp_path / "t.csv", data) == 3
    assert [r["ID"] for r in read_csv(tmp_path / "t.csv")] == ["a", "a_2", "a_3"]


@pytest.mark.parametrize(
    ("accented", "expected"), [(True, "CRÈME BRÛLÉE"), (False, "CREME BRULEE")]
)
def test_accented_letters(data: Path, tmp_path: Path, accented: bool, expected: str) -> None:
    tsv = write_tsv(data / "fr.tsv", HEADER, [["s", "a.mp3", "Crème brûlée."]])
    prepare_tsv(tsv, tmp_path / "fr.csv", data, language="fr", accented_letters=accented)
    assert read_csv(tmp_path / "fr.csv")[0]["wrd"] == expected


def test_missing_empty_and_unspeakable_rows_are_skipped_with_warnings(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (data / "clips" / "empty.mp3").write_bytes(b"")
    rows = [["s", "a.mp3", "kept"], ["s", "gone.mp3", "missing"], ["s", "empty.mp3", "empty"],
            ["s", "b.wav", "?! -- ..."], ["s", "c.flac", "kept too"]]
    tsv = write_tsv(data / "t.tsv", HEADER, rows)
    with caplog.at_level(logging.WARNING, logger="common_voice_prepare"):
        assert prepare_tsv(tsv, tmp_path / "t.csv", data) == 2
    assert [r["ID"] for r in read_csv(tmp_path / "t.csv")] == ["a", "c"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 audio files missing" in w and "gone.mp3" in w for w in warnings)
    assert any("unreadable" in w and "empty.mp3" in w for w in warnings)
    assert any("nothing speakable" in w and ": b" in w for w in warnings)


def test_duration_filter(data: Path, tmp_path: Path) -> None:
    rows = [["s", name, f"clip {name}"] for name in CLIPS]
    tsv = write_tsv(data / "t.tsv", HEADER, rows)
    n = prepare_tsv(tsv, tmp_path / "t.csv", data, max_duration=1.7, min_duration=0.7)
    assert n == 2
    assert [r["ID"] for r in read_csv(tmp_path / "t.csv")] == ["b", "c"]
    with pytest.raises(DataPrepError, match="longer than 0.1s"):
        prepare_tsv(tsv, tmp_path / "t.csv", data, max_duration=0.1)


def test_skip_if_prepared_and_redo_on_change(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tsv, out = basic_tsv(data), tmp_path / "t.csv"
    assert prepare_tsv(tsv, out, data) == 2
    assert (tmp_path / "t.csv.meta.json").is_file()

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("audio re-read")

    monkeypatch.setattr("speechbrain.dataio.dataio.read_audio_info", boom)
    assert prepare_tsv(tsv, out, data) == 2  # fingerprint matches: audio not touched
    monkeypatch.undo()
    write_tsv(tsv, HEADER, [["s1", "a.mp3", "Hello world"], ["s2", "b.wav", "Changed"]])
    assert prepare_tsv(tsv, out, data) == 2
    assert read_csv(out)[1]["wrd"] == "CHANGED"
    assert prepare_tsv(tsv, out, data, max_duration=0.7) == 1  # options are fingerprinted too
    assert not list(tmp_path.glob("*.tmp"))


def check_error(err: pytest.ExceptionInfo[DataPrepError], name: str, *words: str) -> None:
    message = str(err.value)
    assert "\n" not in message and name in message
    for word in words:
        assert word in message


def test_errors_name_the_file(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    with pytest.raises(DataPrepError) as err:
        prepare_tsv(data / "nope.tsv", out, data)
    check_error(err, "nope.tsv", "no such TSV")
    (data / "empty.tsv").write_text("\n\n")
    with pytest.raises(DataPrepError) as err:
        prepare_tsv(data / "empty.tsv", out, data)
    check_error(err, "empty.tsv", "empty")
    write_tsv(data / "hdr.tsv", HEADER, [])
    with pytest.raises(DataPrepError) as err:
        prepare_tsv(data / "hdr.tsv", out, data)
    check_error(err, "hdr.tsv", "no data rows")
    write_tsv(data / "nopath.tsv", ["client_id", "file", "sentence"], [["s", "a.mp3", "hi"]])
    with pytest.raises(DataPrepError) as err:
        prepare_tsv(data / "nopath.tsv", out, data)
    check_error(err, "nopath.tsv", "'path'", "client_id, file, sentence")
    write_tsv(data / "nosent.tsv", ["client_id", "path", "text"], [["s", "a.mp3", "hi"]])
    with pytest.raises(DataPrepError) as err:
        prepare_tsv(data / "nosent.tsv", out, data)
    check_error(err, "nosent.tsv", "'sentence'")
    rows = [["s", f"gone{i}.mp3", "hi"] for i in range(3)]
    write_tsv(data / "gone.tsv", HEADER, rows)
    with pytest.raises(DataPrepError) as err:
        prepare_tsv(data / "gone.tsv", out, data)
    check_error(err, "gone.tsv", "all 3 clips missing")
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "language", "accented", "expected"),
    [
        ("L\u2019homme et l'enfant", "fr", False, "L'HOMME ET L'ENFANT"),
        ("'dell'anno'", "it", True, "DELL'ANNO"),
        ("Schöne Grüße, Straße!", "de", True, "SCHÖNE GRÜSSE STRASSE"),
        ("Schöne Grüße, Straße!", "de", False, "SCHONE GRUSSE STRASSE"),
        ("Ndagukunda n'umugabo", "rw", False, "NDAGUKUNDA N UMUGABO"),
        ("  Hello,\tworld -- well—yes;  «ok» ", "en", False, "HELLO WORLD WELL YES OK"),
        ("Ærø œuvre", "xx", False, "AERO OEUVRE"),
        ("...!?", "en", False, ""),
    ],
)
def test_normalize_sentence(text: str, language: str, accented: bool, expected: str) -> None:
    assert normalize_sentence(text, language, accented) == expected


def test_cli(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tsv, out = basic_tsv(data), tmp_path / "cli.csv"
    argv = ["--data_path", str(data), "--tsv", str(tsv), "--csv", str(out)]
    assert cvp.main(argv) == 0
    assert "2 rows" in capsys.readouterr().out
    argv[3] = str(data / "missing.tsv")
    assert cvp.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing.tsv" in err[0]


def test_prepare_common_voice(data: Path, tmp_path: Path) -> None:
    tsv = basic_tsv(data)
    save = tmp_path / "save" / "nested"
    paths = cvp.prepare_common_voice(data, save, tsv, tsv, tsv)
    assert paths == {split: save / f"{split}.csv" for split in ("train", "dev", "test")}
    assert all(len(read_csv(p)) == 2 for p in paths.values())
    assert cvp.prepare_common_voice(data, tmp_path / "s2", dev_tsv_file=tsv).keys() == {"dev"}


def outside_audio(data: Path) -> Path:
    """A real, readable clip next to clips/ (not in it): refused although it is good audio."""
    outside = data / "outside.wav"
    sf.write(outside, np.zeros(SR // 2, dtype="float32"), SR)
    return outside


def test_paths_outside_clips_are_skipped_with_a_warning_and_never_read(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outside = outside_audio(data)
    (data / "clips" / "link.wav").symlink_to(outside)  # a link out of clips/ is refused too
    bad = ["../../../etc/passwd", "/etc/hostname", "../outside.wav", str(outside), "link.wav",
           "sub/../../outside"]
    rows = [["s", "a.mp3", "kept"], *[["s", name, "bad"] for name in bad],
            ["s", str(data / "clips" / "b.wav"), "absolute inside clips is fine"]]
    tsv = write_tsv(data / "t.tsv", HEADER, rows)
    read: list[str] = []
    real = cvp._duration
    monkeypatch.setattr(cvp, "_duration", lambda path: read.append(str(path)) or real(path))

    with caplog.at_level(logging.WARNING, logger="common_voice_prepare"):
        written = prepare_tsv(tsv, tmp_path / "t.csv", data)

    assert written == 2
    assert [r["ID"] for r in read_csv(tmp_path / "t.csv")] == ["a", "b"]
    assert all(Path(p).parent == (data / "clips").resolve() for p in read)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"6 clip paths outside {data / 'clips'}, skipped: ../../../etc/passwd" in warnings[0]
    assert "/etc/hostname" in warnings[0] and warnings[0].endswith(", ...")


def test_all_paths_outside_clips_is_a_one_line_error(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside_audio(data)
    rows = [["s", "../../../etc/passwd", "one"], ["s", "../outside.wav", "two"]]
    tsv = write_tsv(data / "t.tsv", HEADER, rows)
    out = tmp_path / "t.csv"

    with pytest.raises(DataPrepError) as err:
        prepare_tsv(tsv, out, data)
    status = cvp.main(["--data_path", str(data), "--tsv", str(tsv), "--csv", str(out)])

    expected = (f"{tsv}: no usable rows out of 2 (2 clip paths outside {data / 'clips'}, "
                "e.g. ../../../etc/passwd)")
    assert str(err.value) == expected
    assert status == 2 and capsys.readouterr().err == f"error: {expected}\n"
    assert not out.exists()


def test_clips_folder_may_be_a_symlink(data: Path, tmp_path: Path) -> None:
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "clips").symlink_to(data / "clips", target_is_directory=True)
    rows = [["s", "a.mp3", "relative"], ["s", str(linked / "clips" / "b.wav"), "absolute"],
            ["s", "d", "no extension"], ["s", "c.flac", "flac"]]
    tsv = write_tsv(linked / "t.tsv", HEADER, rows)

    written = prepare_tsv(tsv, tmp_path / "t.csv", linked)

    got = read_csv(tmp_path / "t.csv")
    assert written == 4 and [r["ID"] for r in got] == ["a", "b", "d", "c"]
    assert [Path(r["wav"]) for r in got] == [
        (data / "clips" / name).resolve() for name in ("a.mp3", "b.wav", "d.mp3", "c.flac")]


def test_unopenable_names_count_as_missing(data: Path, tmp_path: Path) -> None:
    (data / "clips" / "loop1").symlink_to("loop2")
    (data / "clips" / "loop2").symlink_to("loop1")
    rows = [["s", "a.mp3", "kept"], ["s", "loop1", "loop"], ["s", "nul\x00.mp3", "nul"],
            ["s", "x" * 5000, "too long"]]
    tsv = write_tsv(data / "t.tsv", HEADER, rows)

    assert prepare_tsv(tsv, tmp_path / "t.csv", data) == 1
    with pytest.raises(DataPrepError, match="all 3 clips missing"):
        prepare_tsv(write_tsv(data / "bad.tsv", HEADER, rows[1:]), tmp_path / "bad.csv", data)
