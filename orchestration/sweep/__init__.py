"""Sweeps: Optuna over pre-training settings scored downstream: the sweep spec, its Tune trials
(pre-training + probes), the driver and the sweep's MLflow writer."""
