"""One settings object per role, whichever transport starts it.

:class:`ServerSettings` and :class:`ClientSettings` are filled from argparse flags
(``server.py``, ``client.py``: :meth:`~ServerSettings.from_flags`) or from the Flower App's run
and node config (:meth:`~ServerSettings.from_run_config`), checked once by :func:`check_server` /
:func:`check_client`, and passed down as one value. A field's run-config key is its name with
hyphens (``weight_strategy`` -> ``weight-strategy``); run config values cannot be empty, so there
``""`` and ``0`` stand for "not set" where a flag's default is None, and lists are comma-separated.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedspeech.base.checks import (
    check_at_least,
    check_data_flags,
    check_file,
    check_fraction,
    check_grpc_max_message_length,
    check_port_free,
    parse_address,
    parse_extra_tests,
)
from fedspeech.base.errors import UsageError
from fedspeech.base.paths import config_dir
from fedspeech.core.defences import AUTO, SERVER_WEIGHTINGS, Defences, check_trust
from fedspeech.core.private import ADAPTIVE, Privacy, check_privacy
from fedspeech.core.secure import check_secure
from fedspeech.math.aggregate import WEIGHT_STRATEGIES

GRPC_MAX_MESSAGE_LENGTH = 2_147_483_647  # gRPC's ceiling, Flower's default

# server.py flags that have no run-config key: they configure the legacy gRPC server itself (the
# App's SuperLink has its own flags for them), or, like --debug, one process's terminal.
LEGACY_ONLY = ("server_address", "certificates", "grpc_max_message_length", "debug", "verbose")


class _FromConfig:
    """Building a settings dataclass from argparse flags or a Flower run config."""

    @classmethod
    def from_flags(cls, args: Any, **extra: Any):
        """From an argparse namespace whose ``dest`` names are the field names."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        for name, value in values.items():
            if isinstance(value, list):
                values[name] = tuple(value)
        return cls(**{**values, **extra})

    @classmethod
    def from_run_config(cls, *configs: Mapping[str, Any], **extra: Any):
        """From Flower run/node configs (later ones win); unknown keys are the App's own."""
        merged: dict[str, Any] = {}
        for config in configs:
            merged.update(config)
        hints = typing.get_type_hints(cls)
        values = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in merged:
                values[f.name] = _convert(merged[key], hints[f.name], key)
        return cls(**{**values, **extra})

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


def _convert(value: Any, hint: Any, key: str) -> Any:
    """A run-config scalar as the field's type: "" and 0 mean None, lists are comma-separated."""
    args = typing.get_args(hint)
    optional = type(None) in args or (isinstance(hint, types.UnionType) and type(None) in args)
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if optional and value in ("", 0) and not isinstance(value, bool):
        return None
    origin = typing.get_origin(base)
    try:
        if origin is tuple:
            items = value if isinstance(value, list | tuple) else str(value).split(",")
            return tuple(str(item).strip() for item in items if str(item).strip())
        if base is bool:
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes")
            return bool(value)
        return base(value)
    except (TypeError, ValueError):
        raise UsageError(f"run config {key} = {value!r}: expected {base.__name__}") from None


@dataclass(frozen=True)
class ModelSettings(_FromConfig):
    """What every process that builds the model needs: the config, its overrides, the device."""

    config_path: str = ""  # "" = the project's (or the installed App's) configs/
    config_file: str = "small_cpu.yaml"
    override: tuple[str, ...] = ()  # KEY=VALUE (VALUE is YAML)
    seed: int | None = None  # None: the config's seed
    device: str | None = None  # None: cuda if available, else cpu
    num_threads: int = 0  # torch CPU threads (0: torch's default)

    @property
    def config(self) -> Path:
        return config_dir(self.config_path) / self.config_file


@dataclass(frozen=True)
class ServerSettings(ModelSettings):
    """A federation's server: data, rounds, weighting, failures; and the legacy listener."""

    data_path: str = "temp_dataset"
    test_path: str = ""
    tr_path: str | None = None  # the tokenizer's transcripts when tokenizer_path is unset
    tokenizer_path: str | None = None
    extra_test: tuple[str, ...] = ()  # NAME=TSV
    tr_add_path: str | None = None  # server-side training after aggregation
    server_lr: float | None = None  # None: the config's server_lr, else 0.01
    pre_train_model_path: str | None = None
    save_path: str = "results"
    rounds: int = 5
    local_epochs: int | None = None  # None: the config's number_of_epochs
    weight_strategy: str = "num"
    min_fit_clients: int = 2
    min_available_clients: int = 2
    min_start_clients: int | None = None  # None: min_available_clients
    fraction_fit: float = 1.0
    clients_per_round: int = 0  # App only: exactly this many nodes a round (0: fraction_fit)
    fraction_evaluate: float = 1.0
    accept_failures: bool = True
    round_timeout: float | None = None  # None: wait for every client (App: Flower's 3600 s)
    resume: bool = False
    # trust (fedspeech/core/defences.py)
    robust: bool = False  # the recommended preset: ROBUST_PRESET
    score_path: str | None = None
    score_utts: int | None = None
    claim_margin: float = 15.0
    max_client_share: float | None = None
    max_examples: int | None = None
    clip_update_norm: str | None = None  # a number, "auto", or None (off)
    aggregation: str = "mean"
    trim_fraction: float = 0.2
    num_malicious: int = 0
    # differential privacy (fedspeech/core/private.py)
    dp_noise_multiplier: float | None = None  # sigma; None: no DP
    dp_clip_norm: str | None = None  # C, or "adaptive"
    dp_initial_clip_norm: float = 1.0  # where adaptive clipping starts
    dp_delta: float | None = None  # None: 1/N
    dp_max_epsilon: float | None = None
    dp_population: int | None = None  # N; None: --min_available_clients
    # secure aggregation, Flower App only (fedspeech/core/secure.py)
    secure_aggregation: bool = False
    secagg_clipping_range: float = 8.0  # SecAgg+ clips each change coordinate to [-R, R]
    secagg_num_shares: float = 1.0  # > 1: a count; <= 1: a fraction of the round's clients
    secagg_reconstruction_threshold: float = 0.67  # > 1: a count; <= 1: a fraction of shares
    secagg_max_weight: float = 1000.0  # a change is scaled by n / this before quantisation
    server_address: str = "127.0.0.1:8080"
    certificates: tuple[str, ...] | None = None  # CA, certificate, private key
    grpc_max_message_length: int = GRPC_MAX_MESSAGE_LENGTH

    @property
    def extra_tests(self) -> dict[str, str]:
        return parse_extra_tests(list(self.extra_test))

    @property
    def tokenizer_source(self) -> str | None:
        return self.tokenizer_path or self.tr_path

    @property
    def start_clients(self) -> int:
        return max(self.min_start_clients or 0, self.min_available_clients)

    def with_preset(self) -> ServerSettings:
        """``--robust`` filled in: the preset's values where a setting is still at its default."""
        if not self.robust:
            return self
        defaults = ServerSettings()
        preset = {k: v for k, v in ROBUST_PRESET.items()
                  if getattr(self, k) == getattr(defaults, k)}
        if self.weight_strategy in ("loss", "wer"):  # claimed -> measured, same metric
            preset["weight_strategy"] = f"server_{self.weight_strategy}"
        return self.replace(**preset)

    @property
    def defences(self) -> Defences:
        clip = self.clip_update_norm
        return Defences(
            aggregation=self.aggregation, trim_fraction=self.trim_fraction,
            num_malicious=self.num_malicious,
            clip_update_norm=None if clip is None else clip if clip == AUTO else float(clip),
            max_client_share=self.max_client_share, max_examples=self.max_examples,
            claim_margin=self.claim_margin)


    @property
    def privacy(self) -> Privacy | None:
        if self.dp_noise_multiplier is None:
            return None
        clip = self.dp_clip_norm or ""
        return Privacy(
            noise_multiplier=self.dp_noise_multiplier,
            clip_norm=clip if clip == ADAPTIVE else float(clip),
            population=self.dp_population or self.min_available_clients,
            delta=self.dp_delta, max_epsilon=self.dp_max_epsilon,
            initial_clip_norm=self.dp_initial_clip_norm,
            sampled_all=self.fraction_fit >= 1.0 and not self.clients_per_round,
            seed=self.seed if self.seed is not None else 0)


# --robust: measured on the demo's attacks (docs/trust.md); a claimed loss or WER weighting
# becomes the server's measurement of the same metric
ROBUST_PRESET: dict[str, Any] = {"clip_update_norm": AUTO, "weight_strategy": "server_loss",
                                 "max_client_share": 0.5}


@dataclass(frozen=True)
class ClientSettings(ModelSettings):
    """One client (a site): its own data, and how it reaches the legacy server."""

    cid: str = "0"
    data_path: str = "temp_dataset"
    tr_path: str = ""  # a TSV, or a folder holding train_<cid>.tsv
    dev_path: str | None = None
    tokenizer_path: str | None = None  # None: the training TSV
    pre_train_model_path: str | None = None  # loaded at round 1, after the server's weights
    eval_device: str | None = None
    save_path: str = "results"
    server_address: str = "127.0.0.1:8080"
    root_certificates: str | None = None
    max_wait: float = 300.0
    grpc_max_message_length: int = GRPC_MAX_MESSAGE_LENGTH

    @property
    def train_tsv(self) -> Path:
        return train_tsv_for(self.tr_path, self.cid)


def train_tsv_for(tr_path: str | Path, cid: str) -> Path:
    """``tr_path`` is a client's TSV, or a folder holding ``train_<cid>.tsv`` (one per client)."""
    path = Path(tr_path)
    return path / f"train_{cid}.tsv" if path.is_dir() else path


def check_server(s: ServerSettings, *, listen: bool = False) -> None:
    """Refuse impossible server settings before anything slow happens (``listen``: the legacy
    server's own port must be free too)."""
    s = s.with_preset()
    check_at_least(s.rounds, 1, "--rounds")
    if s.local_epochs is not None:
        check_at_least(s.local_epochs, 1, "--local_epochs")
    if s.weight_strategy not in WEIGHT_STRATEGIES + SERVER_WEIGHTINGS:
        raise UsageError(f"--weight_strategy '{s.weight_strategy}': expected one of "
                         f"{', '.join(WEIGHT_STRATEGIES + SERVER_WEIGHTINGS)}")
    check_at_least(s.min_fit_clients, 1, "--min_fit_clients")
    if s.min_fit_clients > s.min_available_clients:
        raise UsageError(f"--min_fit_clients ({s.min_fit_clients}) exceeds "
                         f"--min_available_clients ({s.min_available_clients})")
    if s.min_start_clients is not None:
        check_at_least(s.min_start_clients, s.min_available_clients, "--min_start_clients")
    check_at_least(s.clients_per_round, 0, "--clients_per_round")
    check_fraction(s.fraction_fit, "--fraction_fit")
    check_fraction(s.fraction_evaluate, "--fraction_evaluate")
    if s.round_timeout is not None and s.round_timeout <= 0:
        raise UsageError(f"--round_timeout must be positive, got {s.round_timeout}")
    if s.server_lr is not None and s.server_lr <= 0:
        raise UsageError(f"--server_lr must be positive, got {s.server_lr}")
    check_at_least(s.num_threads, 0, "--num_threads")
    check_grpc_max_message_length(s.grpc_max_message_length)
    if not s.test_path:
        raise UsageError("--test_path is required (the server evaluates every round)")
    check_data_flags(s.data_path, s.tokenizer_path, s.save_path)
    for flag in ("test_path", "tr_add_path", "pre_train_model_path"):
        check_file(getattr(s, flag), f"--{flag}")
    for path in s.certificates or ():
        check_file(path, "--certificates")
    parse_extra_tests(list(s.extra_test))
    for _, tsv in s.extra_tests.items():
        check_file(tsv, "--extra_test")
    check_trust(s)
    check_privacy(s)
    check_secure(s)
    if listen:
        check_port_free(s.server_address)


def check_client(s: ClientSettings, *, connect: bool = True) -> None:
    """Refuse impossible client settings before the model is built (``connect``: the legacy
    client's server address and certificates too)."""
    check_data_flags(s.data_path, s.tokenizer_path, s.save_path)
    if not s.train_tsv.is_file():
        raise UsageError(f"--tr_path {s.train_tsv}: no such TSV file")
    for flag in ("dev_path", "pre_train_model_path"):
        check_file(getattr(s, flag), f"--{flag}")
    check_at_least(s.num_threads, 0, "--num_threads")
    if connect:
        check_file(s.root_certificates, "--root_certificates")
        parse_address(s.server_address)
        if s.max_wait < 0:
            raise UsageError(f"--max_wait must not be negative, got {s.max_wait}")
        check_grpc_max_message_length(s.grpc_max_message_length)
