"""One training run, nanoGPT-style: the plain loop (`train`), optimizer and schedule (`optim`),
resume points written off the hot path (`resume`), typed, versioned model and resume files
(`checkpoint`).

Knows nothing of Optuna or MLflow. May import `models`, `data`, `settings` and `runtime`."""
