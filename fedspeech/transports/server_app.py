"""The Flower App's ServerApp: the same federation as ``server.py``, on Flower's own engines.

``flwr run`` starts it on the Simulation Engine (``scripts/simulate.sh``) or on a SuperLink of
the Deployment Engine (``scripts/deploy_local.sh``). The run config (``[tool.flwr.app.config]`` in
``pyproject.toml``, ``-c key=value`` on the command line) holds ``server.py``'s settings with
hyphens; it becomes one :class:`~fedspeech.core.settings.ServerSettings` here, checked by the same
function as the flags. Outputs are the CLI's: ``history.json``, ``history.png``,
``global_model.ckpt``, ``best_model.ckpt``, ``final_model.ckpt`` and the summary table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedspeech.base.cli import log_to_file, setup_logging
from fedspeech.core.settings import ServerSettings, check_server
from fedspeech.speech.model import set_threads
from fedspeech.transports.app_arrays import to_record

app = ServerApp()
logger = logging.getLogger("server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedspeech.roles.server_model import build_federation

    setup_logging()
    settings = ServerSettings.from_run_config(context.run_config)
    check_server(settings)
    set_threads(settings.num_threads)
    log_to_file(Path(settings.save_path) / "server" / "run.log")
    federation = build_federation(settings, run_info={"transport": "flower-app"})
    core, s = federation.core, settings
    if core.start_round >= s.rounds:
        logger.info("all %d rounds already done in %s", s.rounds, s.save_path)
        federation.finish()
        return
    if s.secure_aggregation:  # Flower's SecAgg+ workflow, over the legacy strategy
        from fedspeech.transports.secure_app import run_secure

        run_secure(grid, context, federation, s)
    else:
        _run_core_fedavg(grid, federation, s)
    federation.finish()


def _run_core_fedavg(grid: Grid, federation, s: ServerSettings) -> None:
    from fedspeech.transports.app_strategy import CoreFedAvg, sampling

    core = federation.core
    fraction_fit, fraction_evaluate, per_round = sampling(s)
    strategy = CoreFedAvg(
        core,
        local_epochs=federation.local_epochs,
        fraction_train=fraction_fit,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=per_round,
        min_evaluate_nodes=per_round if fraction_evaluate > 0 else 0,
        # round 1 waits for min-start-clients nodes (as server.py's first round does)
        min_available_nodes=max(s.start_clients, per_round),
    )
    strategy.start(
        grid=grid,
        initial_arrays=to_record(core.weights),
        num_rounds=s.rounds - core.start_round,
        timeout=s.round_timeout or 3600.0,
        evaluate_fn=strategy.evaluate_fn,
    )
