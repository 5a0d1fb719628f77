"""The coordinator: Flower ServerApp glue, strategies, checkpoints, per-site records."""
