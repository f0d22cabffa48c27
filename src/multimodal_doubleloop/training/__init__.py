"""Training: the inner loop, schedules, precision, checkpoints. Plain PyTorch, no Kedro."""
