"""Where a run computes and what it leaves: the device (precision, threads, memory layout),
checkpoints (written atomically, resumed exactly) and prediction with a trained network."""
