"""The argparse flags that several programs share (data, model, gRPC); their checks live with
the settings they fill (:mod:`fedspeech.core.settings`)."""

from __future__ import annotations

import argparse

from fedspeech.base.paths import CONFIG_DIR
from fedspeech.core.settings import GRPC_MAX_MESSAGE_LENGTH
from fedspeech.math.robust import AGGREGATIONS


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
    p.add_argument("--verbose", action="store_true",
                   help="SpeechBrain's and Flower's INFO lines on the terminal too (they always "
                        "go to <save_path>/logs/<program>.log)")
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


def add_trust_flags(p: argparse.ArgumentParser) -> None:
    """The server's defences against a dishonest or broken client (docs/trust.md)."""
    g = p.add_argument_group("trust: what the server does not take on a client's word")
    g.add_argument("--robust", action="store_true",
                   help="the measured recommended preset (docs/trust.md): --clip_update_norm auto, "
                        "--weight_strategy server_loss, --max_client_share 0.5; needs "
                        "--score_path")
    g.add_argument("--score_path", type=str, default=None,
                   help="the server's scoring set (a TSV that is not the test set): every "
                        "update is measured on it, for server_* weighting and against claims")
    g.add_argument("--score_utts", type=int, default=None,
                   help="score on at most this many utterances of --score_path")
    g.add_argument("--claim_margin", type=float, default=15.0,
                   help="WER points between a client's claimed and the server's measured WER "
                        "above which the client is named in a warning")
    g.add_argument("--max_client_share", type=float, default=None,
                   help="no client's coefficient above this share (the excess goes to the others)")
    g.add_argument("--max_examples", type=int, default=None,
                   help="a claimed sample count above this counts as this (num weighting)")
    g.add_argument("--clip_update_norm", type=str, default=None, metavar="C|auto",
                   help="clip each client's change from the global model to L2 norm C, or to "
                        "the round's median change (auto)")
    g.add_argument("--aggregation", type=str, default="mean", choices=AGGREGATIONS,
                   help="mean (weighted), or one of Flower's robust rules")
    g.add_argument("--trim_fraction", type=float, default=0.2,
                   help="trimmed_mean: share of the values cut at each end of every coordinate")
    g.add_argument("--num_malicious", type=int, default=0,
                   help="krum, multikrum, bulyan: the number of attackers to resist")


def add_privacy_flags(p: argparse.ArgumentParser) -> None:
    """User-level differential privacy of the global model (docs/privacy.md)."""
    g = p.add_argument_group("privacy: user-level DP-FedAvg, accounted with Flower's accountant")
    g.add_argument("--dp_noise_multiplier", type=float, default=None,
                   help="sigma: Gaussian noise of std sigma*C/m on the averaged change (m: the "
                        "clients a round samples); turns DP on")
    g.add_argument("--dp_clip_norm", type=str, default=None, metavar="C|adaptive",
                   help="each client's change clipped to L2 norm C, or adapted towards the "
                        "median change norm from --dp_initial_clip_norm")
    g.add_argument("--dp_initial_clip_norm", type=float, default=1.0,
                   help="where adaptive clipping starts")
    g.add_argument("--dp_delta", type=float, default=None,
                   help="the delta epsilon is reported at (default: 1/N)")
    g.add_argument("--dp_max_epsilon", type=float, default=None,
                   help="a round that would take epsilon past this is not started; the run ends")
    g.add_argument("--dp_population", type=int, default=None,
                   help="N, the clients a round's cohort is drawn from (default: "
                        "--min_available_clients)")
