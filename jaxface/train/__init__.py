"""Training: the shared loop, checkpoints, writers, and one step module per task."""
