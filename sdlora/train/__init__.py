"""Training: the run folder, the loop, checkpoints, sampling."""
