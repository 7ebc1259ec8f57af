"""A run's records: history.json, checkpoints, plots."""
