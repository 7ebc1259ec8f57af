"""The argparse flags that several programs share (data, model, gRPC); their checks live with
the settings they fill (:mod:`fedspeech.core.settings`)."""

from __future__ import annotations

import argparse

from fedspeech.base.paths import CONFIG_DIR
from fedspeech.core.settings import GRPC_MAX_MESSAGE_LENGTH


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every program that builds the model: config, overrides, seed, device."""
    p.add_argument("--config_path", type=str, default=str(CONFIG_DIR),
                   help="folder of config files")
    p.add_argument("--config_file", type=str, default="small_cpu.yaml",
                   help="config file name inside --config_path")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a top-level config value (repeatable; VALUE is YAML), e.g. "
                        "batch_size=4; model sizes must match on server and clients")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed (default: the config's seed)")
    p.add_argument("--device", type=str, default=None,
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--num_threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default); use 1 when several "
                        "processes share a few cores")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def add_data_flags(p: argparse.ArgumentParser, *, tokenizer_default: str,
                   data_path: str | None = None, save_path: str = "results") -> None:
    """``--data_path``, ``--tokenizer_path`` and ``--save_path``, the same in every program."""
    p.add_argument("--data_path", type=str, required=data_path is None, default=data_path,
                   help="Common Voice folder (holds clips/)")
    p.add_argument("--tokenizer_path", type=str, default=None,
                   help="shared tokenizer: a .model file, or transcripts (TSV/CSV) to train it "
                        f"from; default: {tokenizer_default}")
    p.add_argument("--save_path", type=str, default=save_path, help="output folder")


def add_grpc_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grpc_max_message_length", type=int, default=GRPC_MAX_MESSAGE_LENGTH,
                   help="largest gRPC message in bytes (the model travels in one; default: "
                        "gRPC's ceiling, 2 GiB)")
