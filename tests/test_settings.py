"""One settings object per role, the same from flags and from the Flower App's run config."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import tomllib
from conftest import ROOT

import client
import server
from fedspeech.base.errors import UsageError
from fedspeech.core.settings import (
    LEGACY_ONLY,
    ClientSettings,
    ServerSettings,
    check_server,
    train_tsv_for,
)

APP_CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
APP_ONLY = {"partition-by", "samples-per-client", "dev-path", "clients-per-round"}


def flag_dests(parser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest != "help"}


def test_every_server_flag_is_a_setting_and_in_the_run_config_or_listed_as_legacy():
    names = {f.name for f in fields(ServerSettings)}
    dests = flag_dests(server.build_parser())
    assert dests - names <= set(LEGACY_ONLY)  # every flag fills a setting (or is terminal-only)
    app_keys = {k.replace("-", "_") for k in APP_CONFIG}
    missing = sorted(d for d in dests if d not in app_keys and d not in LEGACY_ONLY)
    assert missing == [], f"server flags without a run-config key: {missing}"
    unknown = sorted(k for k in APP_CONFIG if k.replace("-", "_") not in names
                     and k not in APP_ONLY)
    assert unknown == [], f"run-config keys that are no setting: {unknown}"


def test_every_client_flag_is_a_setting():
    names = {f.name for f in fields(ClientSettings)}
    assert flag_dests(client.build_parser()) - names <= {"debug", "verbose"}


def test_the_shipped_run_config_reads_as_checked_settings(tmp_path: Path):
    settings = ServerSettings.from_run_config(APP_CONFIG, {"save-path": str(tmp_path)})
    assert settings.local_epochs == 1 and settings.min_start_clients is None
    assert settings.server_lr is None and settings.round_timeout is None  # 0 means unset
    assert settings.pre_train_model_path is None and settings.device is None  # "" means unset
    assert settings.extra_test == () and settings.accept_failures is True
    assert settings.config == ROOT / "configs" / "small_cpu.yaml"
    check_server(settings)  # the App's own defaults pass the CLI's checks


def test_flags_and_run_config_give_the_same_settings(tmp_path: Path):
    argv = ["--data_path", "temp_dataset", "--test_path", "temp_dataset/test.tsv",
            "--rounds", "4", "--local_epochs", "2", "--weight_strategy", "wer",
            "--extra_test", "unseen=temp_dataset/test_unseen.tsv", "--extra_test", "b=x.tsv",
            "--override", "batch_size=4", "--no-accept_failures", "--min_start_clients", "3",
            "--save_path", str(tmp_path), "--seed", "7"]
    from_flags = server.settings_from(server.build_parser().parse_args(argv))
    from_app = ServerSettings.from_run_config({
        "data-path": "temp_dataset", "test-path": "temp_dataset/test.tsv", "rounds": 4,
        "local-epochs": 2, "weight-strategy": "wer",
        "extra-test": "unseen=temp_dataset/test_unseen.tsv, b=x.tsv",
        "override": "batch_size=4", "accept-failures": False, "min-start-clients": 3,
        "save-path": str(tmp_path), "seed": 7, "config-path": from_flags.config_path,
        "min-fit-clients": 2, "min-available-clients": 2})
    assert from_app == from_flags
    assert from_app.extra_tests == {"unseen": "temp_dataset/test_unseen.tsv", "b": "x.tsv"}


def test_a_run_config_value_of_the_wrong_type_names_its_key():
    with pytest.raises(UsageError, match="run config rounds = 'many': expected int"):
        ServerSettings.from_run_config({"rounds": "many"})


@pytest.mark.parametrize(("changes", "message"), [
    ({"rounds": 0}, "--rounds must be at least 1, got 0"),
    ({"weight_strategy": "median"}, "--weight_strategy 'median': expected one of num, loss, wer"),
    ({"min_fit_clients": 3}, r"--min_fit_clients \(3\) exceeds --min_available_clients \(2\)"),
    ({"round_timeout": -1.0}, "--round_timeout must be positive"),
    ({"test_path": ""}, "--test_path is required"),
    ({"extra_test": ("unseen=nope.tsv",)}, "--extra_test nope.tsv: no such file"),
])
def test_check_server_refuses_in_one_line(tmp_path: Path, changes: dict, message: str):
    good = ServerSettings(test_path=str(ROOT / "temp_dataset" / "test.tsv"),
                          data_path=str(ROOT / "temp_dataset"), save_path=str(tmp_path))
    check_server(good)
    with pytest.raises(UsageError, match=message):
        check_server(good.replace(**changes))


def test_train_tsv_rule_is_a_file_or_the_clients_file_in_a_folder(tmp_path: Path):
    assert train_tsv_for(tmp_path, "3") == tmp_path / "train_3.tsv"
    tsv = tmp_path / "mine.tsv"
    tsv.write_text("client_id\tpath\tsentence\n")
    assert train_tsv_for(tsv, "3") == tsv
    assert ClientSettings(cid="1", tr_path=str(tmp_path)).train_tsv == tmp_path / "train_1.tsv"
