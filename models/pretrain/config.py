"""What a pre-trained encoder depends on: CP / MTB settings (paper Appendix A), one home for each default.

Objective-dependent defaults (batch size and steps: CP 2048 x 3,500, MTB 256 x 30,000) are resolved
by :func:`objective_defaults`, the one function of the objective; leave ``batch_size`` / ``steps``
unset to get them. One optimizer step = ``num_workers x micro_batch_size x accum`` pairs
(= ``batch_size``, the paper's "batch size N": N positive pairs, 2N sentences).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from recon.core.hardware import native_cpu_bf16
from recon.core.config import Config, ConfigError, knob
from recon.core.defaults import CP_TEMPERATURE, DEFAULT_ENCODER, DEFAULT_SEED, MAX_SEED, P_BLANK
from recon.core.protocol import POINTS, point_default

# Appendix A: "batch size N" pairs per step and the number of steps, per objective.
OBJECTIVE_DEFAULTS: dict[str, dict[str, int]] = {
    "cp": {"batch_size": 2048, "steps": 3500},
    "mtb": {"batch_size": 256, "steps": 30000},
}
DEMO_CORPUS = "@demo"


def objective_defaults(objective: str) -> dict[str, int]:
    """The paper's batch size and step count for ``objective``."""
    if objective not in OBJECTIVE_DEFAULTS:
        raise ConfigError("objective", f"must be one of {sorted(OBJECTIVE_DEFAULTS)}, got {objective!r}")
    return dict(OBJECTIVE_DEFAULTS[objective])


@dataclass
class PretrainConfig(Config):
    """CP / MTB pre-training settings; :meth:`identity` is what a stage's id hashes."""

    objective: Literal["cp", "mtb"] = knob("cp", "cp (entity-masked contrastive) or mtb (matching the blanks)",
                                           choices=tuple(OBJECTIVE_DEFAULTS))
    corpus: str = knob(DEMO_CORPUS, "corpus directory (recon corpus build); in a study, @demo builds the demo "
                                    "corpus from local benchmarks", identity=False)
    encoder: str | None = knob(None, f"starting encoder: alias, Hugging Face name or directory "
                                     f"(default: the study's encoder, else {DEFAULT_ENCODER})")
    steps: int | None = knob(None, "optimizer steps (default per objective: CP 3,500, MTB 30,000)", ge=1)
    batch_size: int | None = knob(None, "positive pairs per optimizer step over all workers "
                                        "(default per objective: CP 2,048, MTB 256)", ge=2)
    micro_batch_size: int | None = knob(None, "pairs per worker per forward pass (default: min(32, batch / workers))",
                                        ge=1)
    p_blank: float = knob(P_BLANK, "probability of replacing each entity mention with [BLANK]", ge=0, le=1)
    lr: float = knob(3e-5, "peak AdamW learning rate", gt=0)
    weight_decay: float = knob(1e-5, "AdamW weight decay", ge=0)
    warmup: int = knob(500, "linear warm-up steps (capped at the run's steps)", ge=0)
    max_grad_norm: float = knob(1.0, "gradient clipping norm", gt=0)
    max_length: int = knob(64, "word pieces per sentence", ge=8)
    truncation: Literal["window", "cut"] = knob(point_default("truncation"), POINTS["truncation"].help,
                                                choices=("window", "cut"), point="truncation")
    adam_bias_correction: bool = knob(point_default("adam_bias_correction"), POINTS["adam_bias_correction"].help,
                                      point="adam_bias_correction")
    temperature: float = knob(CP_TEMPERATURE, "CP InfoNCE temperature", gt=0)
    mlm_probability: float = knob(0.15, "share of word pieces masked for the MLM loss", ge=0, le=1)
    mlm_weight: float = knob(1.0, "weight of the MLM loss beside the CP/MTB loss", ge=0)
    seed: int = knob(DEFAULT_SEED, "seed of initialisation, sampling, masking and dropout", ge=0, le=MAX_SEED)
    num_workers: int = knob(1, "Ray Train workers (data parallel); sampler streams are per worker", ge=1)
    cpus_per_worker: float = knob(1.0, "CPUs reserved per worker (also its torch threads)", gt=0, identity=False)
    use_gpu: bool = knob(False, "one GPU per worker, NCCL, bf16 autocast", identity=False)
    worker_resources: dict[str, float] = knob(factory=dict, help="custom Ray resources each worker needs, e.g. "
                                              "{\"gpu_node\": 1}", identity=False)
    bf16: bool = knob(True, "bfloat16 autocast on CUDA (ignored on CPU)")
    cpu_bf16: bool = knob(factory=native_cpu_bf16, help="bfloat16 autocast on CPU, on unless set where the CPU "
                          "has it natively (AMX / AVX512-BF16; emulated and slower elsewhere)", identity="unless_default",
                          baseline=False)
    checkpoint_every: int = knob(500, "checkpoint every K steps (and at the last)", ge=1, identity=False)
    keep_checkpoints: int = knob(2, "checkpoints kept in storage", ge=1, identity=False)
    max_failures: int = knob(3, "worker-group restarts allowed", ge=0, identity=False)
    log_every: int = knob(1, "log metrics every K steps", ge=1, identity=False)
    heldout_fraction: float = knob(0.05, "share of the corpus's sentences held out of training (chosen by a hash of "
                                         "their text: the same on every rank, run and seed) to report contrastive "
                                         "accuracy on; 0 disables", ge=0, le=0.5)
    heldout_batches: int = knob(8, "held-out batches (micro_batch_size pairs per worker each) scored at every "
                                   "checkpoint and at the end", ge=0, identity=False)
    allow_leakage: bool = knob(False, "pre-train on a corpus that does not exclude the entity pairs of the "
                                      "evaluated datasets (recorded as a tag and in the tables)", identity=False)

    def check(self) -> None:
        super().check()
        defaults = objective_defaults(self.objective)
        if self.steps is None:
            self.steps = defaults["steps"]
        if self.batch_size is None:
            self.batch_size = defaults["batch_size"]
        if self.micro_batch_size is None:
            self.micro_batch_size = max(1, min(32, self.batch_size // self.num_workers))
        self.accum_steps  # validates divisibility

    @property
    def accum_steps(self) -> int:
        """Micro-steps per optimizer step: batch = workers x micro-batch x accum, exactly."""
        per_round = self.num_workers * int(self.micro_batch_size or 1)
        if int(self.batch_size or 0) % per_round:
            raise ConfigError("batch_size", f"{self.batch_size} is not a multiple of workers x micro-batch = "
                                            f"{self.num_workers} x {self.micro_batch_size} = {per_round}; choose "
                                            "batch_size or micro_batch_size so that it divides")
        return int(self.batch_size) // per_round

    def optimizer_config(self):
        """The training loop's optimizer and schedule settings of this run (AdamW, its decay, warm-up capped
        at the run's steps, clipping, bf16 and the protocol's bias correction): one place reads them."""
        from recon.models.train.config import TrainConfig

        return TrainConfig(lr=self.lr, weight_decay=self.weight_decay, warmup_steps=min(self.warmup, int(self.steps)),
                           max_grad_norm=self.max_grad_norm, bf16=self.bf16, cpu_bf16=self.cpu_bf16,
                           adam_bias_correction=self.adam_bias_correction)

    @property
    def encoder_name(self) -> str:
        return self.encoder or DEFAULT_ENCODER

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        out["encoder"] = self.encoder_name
        return out


__all__ = ["PretrainConfig", "OBJECTIVE_DEFAULTS", "objective_defaults", "DEMO_CORPUS"]
