"""The Flower App's ServerApp: the same federation as ``server.py``, on Flower's own engines.

``flwr run`` starts it on the Simulation Engine (``scripts/simulate.sh``) or on a SuperLink of
the Deployment Engine (``scripts/deploy_local.sh``). The run config (``[tool.flwr.app.config]`` in
``pyproject.toml``, ``-c key=value`` on the command line) mirrors ``server.py``'s flags; it is
read into plain values once, here. Outputs are the CLI's: ``history.json``, ``history.png``,
``global_model.ckpt``, ``best_model.ckpt``, ``final_model.ckpt`` and the summary table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedspeech.base.checks import parse_extra_tests
from fedspeech.base.cli import setup_logging
from fedspeech.base.paths import config_dir
from fedspeech.speech.config import parse_overrides
from fedspeech.speech.model import set_threads
from fedspeech.transports.app_arrays import to_record

app = ServerApp()
logger = logging.getLogger("server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedspeech.roles.server_model import build_federation
    from fedspeech.transports.app_strategy import CoreFedAvg

    rc = context.run_config
    rounds = int(rc["rounds"])
    local_epochs = int(rc["local-epochs"]) or None
    weight_strategy = str(rc["weight-strategy"])
    config_file = config_dir(str(rc["config-path"])) / str(rc["config-file"])
    seed = int(rc["seed"])
    data_path = str(rc["data-path"])
    test_path = str(rc["test-path"])
    tr_add_path = str(rc["tr-add-path"]) or None
    tokenizer_path = str(rc["tokenizer-path"])
    extra_test = str(rc["extra-test"])
    save_path = Path(str(rc["save-path"]))
    fraction_fit = float(rc["fraction-fit"])
    clients_per_round = int(rc["clients-per-round"])
    fraction_evaluate = float(rc["fraction-evaluate"])
    min_fit = int(rc["min-fit-clients"])
    min_available = int(rc["min-available-clients"])
    server_lr = float(rc["server-lr"]) or None
    resume = bool(rc["resume"])
    setup_logging()
    set_threads(int(rc["num-threads"]))

    federation = build_federation(
        config_file=config_file,
        overrides=parse_overrides([], seed),
        device=None,
        data_path=data_path,
        test_path=test_path,
        save_path=save_path,
        extra_tests=_extra_tests(extra_test),
        tr_add_path=tr_add_path,
        tokenizer_path=tokenizer_path,
        resume=resume,
        weight_strategy=weight_strategy,
        local_epochs=local_epochs,
        server_lr=server_lr,
        min_updates=min_fit,
        run_info={"transport": "flower-app"},
    )
    core = federation.core
    if core.start_round >= rounds:
        logger.info("all %d rounds already done in %s", rounds, save_path)
        federation.finish()
        return
    # clients-per-round fixes the sample size (cross-device: the nodes sampled each round, out
    # of however many are connected); else a fraction of the connected nodes. Flower's FedAvg
    # takes a fraction of 0 as "skip this phase", hence the tiny fraction.
    if clients_per_round:
        fraction_fit = 1e-12
        fraction_evaluate = 1e-12 if fraction_evaluate > 0 else 0.0
    per_round = max(clients_per_round, min_fit)
    strategy = CoreFedAvg(
        core,
        local_epochs=federation.local_epochs,
        fraction_train=fraction_fit,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=per_round,
        min_evaluate_nodes=per_round if fraction_evaluate > 0 else 0,
        min_available_nodes=max(min_available, per_round),
    )
    strategy.start(
        grid=grid,
        initial_arrays=to_record(core.weights),
        num_rounds=rounds - core.start_round,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=strategy.evaluate_fn,
    )
    federation.finish()


def _extra_tests(spec: str) -> dict[str, str]:
    """``"unseen=path.tsv,other=b.tsv"`` (run config values are scalars, not lists)."""
    return parse_extra_tests([item for item in spec.split(",") if item])
