"""Every key that travels between the server and a client, for both transports.

The legacy gRPC transport sends config dicts and receives metrics dicts; the Flower App sends
``ConfigRecord`` s and receives ``MetricRecord`` s (numbers only, so what a client says about
itself travels in a separate ``ConfigRecord`` named :data:`INFO`). The keys are the same on both.
"""

from __future__ import annotations

from typing import Any

# server -> client (the train and evaluate instructions)
ROUND = "server-round"  # Flower's own key; the global round number, counting across resumes
EPOCHS = "epochs"  # local epochs this round
TOKENIZER_SHA256 = "tokenizer-sha256"  # the federation's tokenizer file; a client must match it

# client -> server: who the client says it is
CLIENT_ID = "cid"

# client -> server: numbers
NUM_EXAMPLES = "num-examples"  # the App's sample count (legacy: FitRes.num_examples)
LOSS = "loss"  # evaluation loss (legacy: EvaluateRes.loss)
TRAIN_LOSS = "train_loss"
VALID_WER = "valid_wer"
FIT_SECONDS = "fit_seconds"
TRAIN_SECONDS = "train_seconds"
VALID_SECONDS = "valid_seconds"
PEAK_RSS_MB = "peak_rss_mb"
WER = "wer"
CER = "cer"
EVAL_SECONDS = "eval_seconds"

# the App's record names inside a message's RecordDict
ARRAYS, CONFIG, METRICS, INFO = "arrays", "config", "metrics", "info"


def train_config(rnd: int, epochs: int, tokenizer_sha256: str | None) -> dict[str, Any]:
    """What a client needs to train round ``rnd``."""
    return {ROUND: rnd, EPOCHS: epochs, TOKENIZER_SHA256: tokenizer_sha256 or ""}


def evaluate_config(rnd: int, tokenizer_sha256: str | None) -> dict[str, Any]:
    """What a client needs to evaluate the global model of round ``rnd``."""
    return {ROUND: rnd, TOKENIZER_SHA256: tokenizer_sha256 or ""}


def identity(cid: str, tokenizer_sha256: str) -> dict[str, str]:
    """What a client says about itself in every reply (a claim: the server checks the hash)."""
    return {CLIENT_ID: cid, TOKENIZER_SHA256: tokenizer_sha256}
