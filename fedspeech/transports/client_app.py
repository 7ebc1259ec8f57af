"""The Flower App's ClientApp: a thin adapter over :class:`local_training.LocalTrainer`.

Runs on the Simulation Engine (virtual clients in Ray actors) and on the Deployment Engine (one
SuperNode per site). A node's data comes from its node config:

- ``data-path``, ``tr-path`` (a TSV, or a folder holding ``train_<cid>.tsv``), ``dev-path``,
  ``cid``: a real site's own files (``flower-supernode --node-config``);
- else ``partition-id`` / ``num-partitions`` (simulation): the shard of the run config's
  ``tr-path`` that :func:`partitioning.client_shard` gives this partition, computed on the fly.

The Brain is built once per process and reused for every virtual client the process serves; a
client's dataset exists only while it trains or evaluates.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedspeech.core import protocol
from fedspeech.core.settings import ClientSettings, check_client
from fedspeech.speech.config import parse_overrides
from fedspeech.speech.model import set_threads
from fedspeech.transports.app_arrays import from_record, to_record

logger = logging.getLogger("client")


def _secure_route(msg: Message, context: Context, call_next) -> Message:
    """Messages of the SecAgg+ workflow (``secure-aggregation = true``) go to its legacy
    ClientApp (:mod:`fedspeech.transports.secure_app`); every other message is this App's."""
    from fedspeech.transports.secure_app import is_secure_message, secure_client_app

    if is_secure_message(msg.content):
        return secure_client_app(_trainer)(msg, context)
    return call_next(msg, context)


app = ClientApp(mods=[_secure_route])

_BRAINS: dict[tuple, Any] = {}  # one model per process and config (Ray actors serve many nodes)
_ROWS: dict[tuple, dict] = {}  # prepared rows of a shared corpus TSV, per process


@app.train()
def train(msg: Message, context: Context) -> Message:
    trainer = _trainer(context)
    config = msg.content[protocol.CONFIG]
    trainer.check_tokenizer(str(config[protocol.TOKENIZER_SHA256]))
    weights, samples, metrics = trainer.fit(
        from_record(msg.content[protocol.ARRAYS]), rnd=int(config[protocol.ROUND]),
        epochs=int(config[protocol.EPOCHS]),
    )
    content = RecordDict({
        protocol.ARRAYS: to_record(weights),
        protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: samples, **metrics}),
        protocol.INFO: ConfigRecord(protocol.identity(trainer.cid, trainer.tokenizer_sha256)),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    trainer = _trainer(context)
    trainer.check_tokenizer(str(msg.content[protocol.CONFIG][protocol.TOKENIZER_SHA256]))
    loss, samples, metrics = trainer.evaluate(from_record(msg.content[protocol.ARRAYS]))
    content = RecordDict({
        protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: samples, protocol.LOSS: loss,
                                        **metrics}),
        protocol.INFO: ConfigRecord(protocol.identity(trainer.cid, trainer.tokenizer_sha256)),
    })
    return Message(content=content, reply_to=msg)


def _trainer(context: Context):
    """This node's trainer: the process's shared Brain with this node's data."""
    from fedspeech.roles.local_training import LocalTrainer
    from fedspeech.speech.model import datasets_for, prepare_splits

    rc, node = context.run_config, context.node_config
    site = "tr-path" in node  # a real site names its own files; a virtual client has a partition
    s = ClientSettings.from_run_config(rc, node, cid=str(node.get("cid", context.node_id)))
    overrides = parse_overrides(list(s.override), s.seed)
    key = (str(s.config), s.tokenizer_path, tuple(sorted(overrides.items())), s.device)
    brain = _BRAINS.get(key)
    if brain is None:
        from fedspeech.speech.model import build_brain

        set_threads(s.num_threads)
        brain = build_brain(s.config, output_folder=Path(s.save_path) / "clients" / "model",
                            tokenizer_source=s.tokenizer_path, device=s.device,
                            overrides=overrides)
        _BRAINS[key] = brain

    if site:
        check_client(s, connect=False)
        cid = s.cid
        brain.hparams.output_folder = str(Path(s.save_path) / f"client_{cid}")
        sources: dict[str, Any] = prepare_splits(vars(brain.hparams), s.data_path,
                                                 {"train": s.train_tsv, "dev": s.dev_path})
    else:  # a virtual client: a shard of the shared corpus
        pid, num = int(node["partition-id"]), int(node["num-partitions"])
        cid = str(pid)
        sources = {
            "train": _shard(brain, s.data_path, s.tr_path, pid, num,
                            by=str(rc["partition-by"]), seed=int(s.seed or 0),
                            samples=int(rc["samples-per-client"])),
        }
        if s.dev_path:
            sources["dev"] = {k: dict(v) for k, v in _corpus(brain, s.data_path,
                                                             s.dev_path).items()}
    return LocalTrainer(cid, brain, datasets_for(brain, sources))


def _corpus(brain, data_path: str, tsv: str) -> dict:
    """All prepared rows of a TSV shared by the virtual clients (prepared once per process)."""
    from fedspeech.speech.audio import load_csv_rows
    from fedspeech.speech.model import prepare_splits

    key = (data_path, tsv)
    if key not in _ROWS:  # named by the TSV: processes preparing the same one share the file
        name = "corpus_" + hashlib.sha256(f"{data_path}|{tsv}".encode()).hexdigest()[:12]
        csv_file = prepare_splits(vars(brain.hparams), data_path, {name: tsv})[name]
        _ROWS[key] = load_csv_rows(csv_file)
    return _ROWS[key]


def _shard(brain, data_path: str, tsv: str, pid: int, num: int, **how) -> dict:
    from fedspeech.speech.partitioning import client_shard

    rows = _corpus(brain, data_path, tsv)
    records = [{"id": k, **v} for k, v in rows.items()]
    shard = client_shard(records, pid, num, key="spk_id", **how)
    logger.info("virtual client %d of %d: %d utterances", pid, num, len(shard))
    return {r["id"]: dict(rows[r["id"]]) for r in shard}  # SpeechBrain adds keys in place
