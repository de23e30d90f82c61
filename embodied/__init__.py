"""The runtime: cluster, placement, workers, channels, runner, weight sync, logging, checkpoints."""
