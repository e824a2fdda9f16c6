"""Pre-training on Ray Train: the driver (storage, MLflow, the final encoder), the worker around
``models.pretrain``'s loop, checkpoints in storage, the one TorchTrainer builder, and export."""
