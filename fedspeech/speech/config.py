"""Reading and checking a hyperpyyaml config; every problem becomes a one-line ConfigError."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hyperpyyaml import load_hyperpyyaml

from fedspeech.base import (  # noqa: F401  (before SpeechBrain classes load with the config)
    env as process_setup,
)
from fedspeech.base.errors import UsageError, UserError
from fedspeech.base.files import atomic_write


class ConfigError(UserError):
    """A bad config file, override or combination of paths; the message is one line."""


# What the Brain, init_model and the server read from a config (a missing one would otherwise be
# a KeyError/AttributeError deep inside training).
REQUIRED_KEYS = (
    "seed", "sample_rate", "n_mels", "output_neurons", "token_type", "blank_index", "bos_index",
    "eos_index", "compute_features", "log_softmax", "ctc_cost", "modules", "opt_class",
    "epoch_counter", "dataloader_options", "test_dataloader_options",
)
REQUIRED_MODULES = ("enc", "ctc_lin", "normalize")
SEQ2SEQ_KEYS = ("seq_cost", "ctc_weight", "number_of_ctc_epochs")
SEQ2SEQ_MODULES = ("emb", "seq_lin")


def check_config_keys(config_file: str | Path, hparams: dict) -> None:
    """A key or module the code needs but the config lacks is a one-line ConfigError."""
    missing = [k for k in REQUIRED_KEYS if k not in hparams]
    modules = hparams.get("modules")
    if not missing and not isinstance(modules, dict):
        raise ConfigError(f"{config_file}: 'modules' must be a mapping of name: module")
    if not missing:
        needed = list(REQUIRED_MODULES)
        if "dec" in modules:
            beam = hparams.get("decode_method", "greedy") == "beam"
            searchers = ("valid_search", "test_search") if beam else ("greedy_searcher",)
            needed += list(SEQ2SEQ_MODULES)
            missing += [k for k in (*SEQ2SEQ_KEYS, *searchers) if k not in hparams]
        missing += [f"modules.{m}" for m in needed if m not in modules]
    if missing:
        keys = ", ".join(repr(k) for k in missing)
        raise ConfigError(f"{config_file}: missing key{'s' if len(missing) > 1 else ''} {keys}")


def load_hparams(config_file: str | Path, overrides: dict[str, Any] | None = None) -> dict:
    """Read a hyperpyyaml config; a missing file or bad YAML becomes a one-line ConfigError."""
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return load_hyperpyyaml(f, overrides or {})
    except Exception as err:  # hyperpyyaml raises many types; keep the first line
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
        ref = re.search(r'reference "([^"]+)" is not valid', text)
        if ref:
            why = f"missing key '{ref.group(1)}' (used as <{ref.group(1)}>)"
        elif mark is not None and problem:
            why = f"invalid YAML, line {mark.line + 1}: {problem}"
        else:
            why = f"invalid config ({first})"
        raise ConfigError(f"{path}: {why}") from err


def save_resolved_config(
    config_file: str | Path, overrides: dict[str, Any], target: str | Path
) -> None:
    """Keep the config as this run used it: references resolved, overrides applied.

    What ``sb.create_experiment_directory`` saves, without its logging and script copying.
    """
    from hyperpyyaml import resolve_references

    with open(config_file, encoding="utf-8") as f:
        resolved = resolve_references(f, overrides).getvalue()
    with atomic_write(target, "w", encoding="utf-8") as out:
        out.write(resolved)


def parse_overrides(items: list[str], seed: int | None = None) -> dict[str, object]:
    """``--override KEY=VALUE`` (repeatable; VALUE is YAML) and ``--seed`` as config overrides."""
    from ruamel.yaml import YAML

    overrides: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--override '{item}': expected KEY=VALUE, e.g. batch_size=4")
        try:
            overrides[key.strip()] = YAML(typ="safe").load(value)
        except Exception as err:
            raise UsageError(f"--override '{item}': value is not valid YAML ({err})") from None
    if seed is not None:
        overrides["seed"] = seed
    return overrides
