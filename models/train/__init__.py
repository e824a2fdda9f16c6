"""Training and evaluation: the one loop (``fit``), optimizers, batching, metrics, and the two runs built
on them: supervised fine-tuning and few-shot episodes."""
