"""Training: the loop every task shares, checkpoints, writers, progress."""
