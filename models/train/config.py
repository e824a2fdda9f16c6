"""The training loop's settings (paper Appendix B for supervised RE): :class:`TrainConfig`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from recon.core.hardware import native_cpu_bf16
from recon.core.config import Config, knob
from recon.core.defaults import DEFAULT_SEED, MAX_SEED
from recon.core.protocol import POINTS, point_default
from recon.models.train import metrics as metrics_lib


@dataclass
class TrainConfig(Config):
    """Optimisation settings of one run of the loop (paper Appendix B for supervised RE).

    ``batch_size`` is used by whoever builds the loaders. ``metric`` and ``negative_id`` default to
    the dataset's (fine-tuning fills them in); the seed is the run's, so it is part of the trial id.
    """

    lr: float = knob(3e-5, "peak learning rate (Appendix B: 3e-5)", gt=0)
    batch_size: int = knob(64, "examples per optimizer step before accumulation (Appendix B: 64)", ge=1)
    epochs: int = knob(6, "passes over the training data (Appendix B: 6)", ge=1)
    optimizer: Literal["adamw", "sgd"] = knob("adamw", "adamw (encoders) or sgd (the CNN)", choices=("adamw", "sgd"))
    weight_decay: float = knob(0.01, "AdamW weight decay; biases and LayerNorm excluded (not in the paper)", ge=0)
    adam_eps: float = knob(1e-8, "AdamW epsilon", gt=0)
    fused_adamw: bool = knob(True, "AdamW as one fused kernel (CPU and CUDA; 4.7x faster optimizer step for MiniLM "
                                   "on CPU); off: torch's per-parameter loop, the same update up to float rounding")
    adam_bias_correction: bool = knob(point_default("adam_bias_correction"), POINTS["adam_bias_correction"].help,
                                      point="adam_bias_correction")
    warmup_ratio: float = knob(0.1, "linear warm-up as a fraction of all optimizer steps", ge=0, le=1)
    warmup_steps: int | None = knob(None, "fixed warm-up steps, overriding warmup_ratio (the authors' script: 500)", ge=0)
    schedule: Literal["linear", "constant"] = knob("linear", "learning-rate schedule after warm-up",
                                                   choices=("linear", "constant"))
    max_grad_norm: float | None = knob(1.0, "gradient clipping norm (none: no clipping)", gt=0)
    grad_accum: int = knob(1, "micro-batches accumulated per optimizer step", ge=1)
    max_train_steps: int | None = knob(None, "stop after this many optimizer steps (shortens the schedule)", ge=1)
    eval_batch_size: int = knob(128, "examples per forward pass when evaluating (inference only)", ge=1,
                                identity=False)
    seed: int = knob(DEFAULT_SEED, "seed of initialisation, shuffling, dropout and seeded splits", ge=0, le=MAX_SEED)
    metric: str | None = knob(None, "evaluation metric (default: the dataset's)", choices=metrics_lib.METRICS)
    negative_id: int | None = knob(None, "label id of the negative class (default: the dataset's)", cli=False)
    device: str = knob("auto", "auto (cuda when present), cpu or cuda[:N]", identity=False)
    bf16: bool = knob(True, "bfloat16 autocast on CUDA (ignored on CPU)")
    cpu_bf16: bool = knob(factory=native_cpu_bf16, help="bfloat16 autocast on CPU, on unless set where the CPU "
                          "has it natively (AMX / AVX512-BF16; emulated and slower elsewhere)", identity="unless_default",
                          baseline=False)
    deterministic: bool = knob(True, "torch deterministic kernels: ~6% slower on CPU (bench/bench_loop.py)")
    progress: bool | None = knob(None, "progress bar (default: only on a terminal)", identity=False)


__all__ = ["TrainConfig"]
