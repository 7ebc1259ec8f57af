"""Federated speech recognition with Flower and SpeechBrain: everything beyond the tutorial's
top-level files, one folder per layer.

A layer imports only the layers below it (``tests/test_layers.py`` enforces it)::

    base        errors, atomic files, one-line CLI errors, flag checks, TSV rows (stdlib only)
    math        aggregation coefficients, weighted sums, update checks (numpy only)
    core        the round (RoundCore), its typed history row, settings, message protocol
    speech      SpeechBrain side: config, tokenizer, audio datasets, model building, partitions
                (with the top-level brain.py, weights.py and common_voice_prepare.py)
    records     history.json, checkpoints, plots
    roles       the server's model, a client's local training, centralised training
    transports  the Flower App (with the top-level strategy.py, the legacy gRPC adapter)
    tools       the programs' code: launcher, engines runner, benchmark, experiments
                (with the top-level server.py and client.py, and scripts/)
"""
