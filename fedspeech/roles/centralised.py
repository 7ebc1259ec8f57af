"""Centralised training on a speaker fold's pooled data, to compare a federation with.

:func:`train_centralised` runs the federation's schedule on pooled data: every round
``local_epochs`` epochs on the clients' pooled training takes, then one server-side epoch on the
server's held-out takes at ``server_lr`` - the same passes over the same utterances, with no
averaging (the folds: :mod:`fedspeech.speech.folds`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedspeech.speech.model import init_model
from weights import load_model_file


def train_centralised(
    config_file: Path, files: dict[str, Path], data_path: Path, out: Path, *,
    rounds: int, local_epochs: int, server_training: bool, overrides: dict[str, Any],
    pretrained: Path | None = None,
) -> dict[str, Any]:
    """The federation's schedule on pooled data; the final test WERs (beside the fold's own).

    ``pretrained``: a ``scripts/pretrain.py`` folder to start from, as the federation does.
    """
    brain, data = init_model(
        config_file, output_folder=out, data_folder=data_path, train_tsv=files["train"],
        test_tsv=files["test"], extra_tsvs={"unseen": files["unseen"], "server": files["server"]},
        tokenizer_source=pretrained / "tokenizer.model" if pretrained else files["train"],
        overrides=overrides,
    )
    if pretrained:
        load_model_file(brain.modules, pretrained / "model.ckpt", str(brain.device))
    server_lr = float(getattr(brain.hparams, "server_lr", brain.hparams.lr))
    samples = 0
    for rnd in range(1, rounds + 1):
        n, loss, _ = brain.train_epochs(data["train"], None, epochs=local_epochs,
                                        first_epoch=(rnd - 1) * local_epochs + 1)
        samples += n
        if server_training:
            n, _, _ = brain.train_epochs(data["server"], None, epochs=1,
                                         first_epoch=rnd * local_epochs, lr=server_lr)
            samples += n
        print(f"centralised round {rnd}: train loss {loss:.4f}", flush=True)
    test = brain.test(data["test"], final=True)
    unseen = brain.test(data["unseen"], final=True)
    return {"test_wer": test["wer"], "unseen_wer": unseen["wer"], "test_cer": test["cer"],
            "unseen_cer": unseen["cer"], "train_samples": samples}
