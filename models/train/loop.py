"""The one training loop: fine-tuning, few-shot episodes and the sweeps all call :func:`fit`.

    cfg = TrainConfig(lr=3e-5, epochs=6, metric="micro_f1", negative_id=label2id["Other"])
    seed_everything(cfg.seed)                       # before building the model: the head init is seeded
    model = RelationClassifier(encoder, num_labels)
    result = fit(model, ClassificationTask(), train_loader, dev_loader, test_loader, cfg)
    result.test_at_best["score"]

What a trial needs and nothing more: AdamW (or SGD for the CNN) with linear warm-up and decay,
gradient clipping and accumulation, a dev evaluation each epoch and the TEST score at the best dev
epoch. The loop knows nothing about Ray or MLflow; they subscribe through ``callbacks``
(``on_epoch_end(epoch, metrics)`` and ``on_train_end(result)``).

Test at the best dev epoch: the loop keeps a CPU copy of the weights whenever dev improves and
evaluates test once, at the end, on the restored best weights. A copy is a memory move (~0.4 GB
for BERT-base), while evaluating test after every epoch costs ``epochs`` full test passes; and the
model handed back is the best one, ready to be saved.

Hyper-parameters (Appendix B, Table 4): lr 3e-5, batch 64, 6 epochs for supervised RE. The appendix
gives no weight decay or warm-up for fine-tuning; we use weight decay 0.01 (bias and LayerNorm
excluded) and a 10% linear warm-up. The authors' script used weight decay 1e-5 and a fixed 500
warm-up steps, which on the 1% splits (12 optimizer steps in all) never reaches the peak rate; set
``warmup_steps=500`` to reproduce that behaviour deliberately.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Literal, Protocol, Sequence, Sized, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader

from recon.core.config import Config, knob
from recon.core.defaults import DEFAULT_SEED
from recon.core.errors import ReconError
from recon.core.protocol import POINTS, point_default

from recon.models.nets.seed import seed_everything
from recon.models.train import metrics as metrics_lib


class TrainingDiverged(ReconError):
    """The loss became NaN or infinite; training stops at once rather than wasting the budget."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(
            f"training diverged: loss is {loss} at epoch {epoch}, step {step} "
            "(lower the learning rate, or check the inputs of that batch)"
        )


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
    seed: int = knob(DEFAULT_SEED, "seed of initialisation, shuffling, dropout and seeded splits")
    metric: str | None = knob(None, "evaluation metric (default: the dataset's)", choices=metrics_lib.METRICS)
    negative_id: int | None = knob(None, "label id of the negative class (default: the dataset's)", cli=False)
    device: str = knob("auto", "auto (cuda when present), cpu or cuda[:N]", identity=False)
    bf16: bool = knob(True, "bfloat16 autocast on CUDA (ignored on CPU)")
    deterministic: bool = knob(True, "torch deterministic kernels: ~6% slower on CPU (bench/bench_loop.py)")
    progress: bool | None = knob(None, "progress bar (default: only on a terminal)", identity=False)


@runtime_checkable
class Task(Protocol):
    """What differs between supervised classification and few-shot episodes; the loop is the same."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    def predict(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]: ...


class ClassificationTask:
    """Cross-entropy over ``model(**inputs)`` logits; the batch is a dict with a ``labels`` tensor."""

    label_key = "labels"

    def _logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(**{k: v for k, v in batch.items() if k != self.label_key})

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        logits = self._logits(model, batch)
        return nn.functional.cross_entropy(logits.float(), batch[self.label_key])

    def predict(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self._logits(model, batch).argmax(dim=-1), batch[self.label_key]


class Callback:
    """No-op base: subclass and override what you need (Ray Tune reporting, MLflow logging)."""

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:  # pragma: no cover - interface
        pass

    def on_train_end(self, result: "FitResult") -> None:  # pragma: no cover - interface
        pass


@dataclass
class FitResult:
    best_epoch: int
    best_dev: dict | None
    test_at_best: dict | None
    history: list[dict] = field(default_factory=list)
    test_predictions: list[tuple[int, int]] = field(default_factory=list)  # (pred, gold), loader order
    steps: int = 0
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("test_predictions")
        return out


@contextlib.contextmanager
def deterministic(seed: int, enabled: bool = True) -> Iterator[None]:
    """Seed everything and ask torch for deterministic kernels, restoring the previous mode after."""
    seed_everything(seed)
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_loader(
    dataset, batch_size: int, *, shuffle: bool, seed: int = 0, collate_fn=None, drop_last: bool = False
) -> DataLoader:
    """A DataLoader whose shuffling comes from its own seeded generator (``fit`` re-seeds it)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn,
                      generator=generator, drop_last=drop_last)


def _reseed_loader(loader: Iterable, seed: int) -> None:
    """Make the shuffling order a function of ``seed`` even when a loader object is reused."""
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(seed)


def move_to(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) dict/list/tuple batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


class UncorrectedAdamW(torch.optim.AdamW):
    """AdamW without bias correction: the update of transformers 3.0.2's ``AdamW(correct_bias=False)``,
    which the authors fine-tuned and pre-trained with.

    Per parameter, at step t: ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``,
    ``p -= lr m / (sqrt(v) + eps)``, then ``p -= lr wd p``. torch's AdamW divides by the bias corrections
    ``bc1 = 1 - b1^t`` and ``sqrt(bc2) = sqrt(1 - b2^t)``; running it with ``lr' = lr bc1 / sqrt(bc2)``,
    ``eps' = eps / sqrt(bc2)`` and ``wd' = wd sqrt(bc2) / bc1`` gives exactly the update above (the decay
    comes before the Adam step in torch and after it in transformers: the two differ by ``lr wd`` times the
    update, ~1e-9 of it at the paper's settings, below float32 rounding). So the fused kernel still runs.
    The scheduled values are restored after every step: state dicts and schedulers see the real ones.
    Every parameter of a group must step together (as in :func:`fit`: each gets a gradient every step).
    """

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        saved = []
        for group in self.param_groups:
            saved.append((group["lr"], group["eps"], group["weight_decay"]))
            t = 1 + max((float(self.state[p]["step"]) for p in group["params"]
                         if p.grad is not None and "step" in self.state[p]), default=0.0)
            beta1, beta2 = group["betas"]
            bc1, sqrt_bc2 = 1.0 - beta1 ** t, math.sqrt(1.0 - beta2 ** t)
            group["lr"] = group["lr"] * bc1 / sqrt_bc2
            group["eps"] = group["eps"] / sqrt_bc2
            group["weight_decay"] = group["weight_decay"] * sqrt_bc2 / bc1
        try:
            return super().step(closure)
        finally:
            for group, (lr, eps, weight_decay) in zip(self.param_groups, saved):
                group["lr"], group["eps"], group["weight_decay"] = lr, eps, weight_decay


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device | None = None) -> torch.optim.Optimizer:
    """AdamW with no decay on biases and LayerNorm weights (BERT practice), or plain SGD.

    AdamW runs as torch's fused kernel (``config.fused_adamw``) where torch has one (CPU, CUDA): one
    pass over all parameters instead of a dozen small ops per tensor, about 0.03 s instead of 0.13 s
    per step for MiniLM's 22.7M parameters on one CPU thread (a sixth of a batch-16 training step).
    ``device`` defaults to the parameters' own. ``config.adam_bias_correction=False`` gives the
    authors' uncorrected update (:class:`UncorrectedAdamW`), on the same kernel.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD([p for _, p in params], lr=config.lr, weight_decay=config.weight_decay)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {"params": [p for n, p in params if not n.endswith(no_decay)], "weight_decay": config.weight_decay},
        {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    device = device or (params[0][1].device if params else torch.device("cpu"))
    fused = config.fused_adamw and device.type in ("cpu", "cuda")
    cls = torch.optim.AdamW if config.adam_bias_correction else UncorrectedAdamW
    return cls([g for g in groups if g["params"]], lr=config.lr, eps=config.adam_eps, fused=fused or None)


def _total_steps(train_loader: Sized, config: TrainConfig) -> int:
    per_epoch = math.ceil(len(train_loader) / config.grad_accum)
    total = per_epoch * config.epochs
    if config.max_train_steps is not None:
        total = min(total, config.max_train_steps)
    return max(total, 1)



def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, config: TrainConfig):
    """Linear warm-up then linear decay to 0 (``transformers.get_linear_schedule_with_warmup``)."""
    from transformers import get_constant_schedule, get_linear_schedule_with_warmup

    if config.schedule == "constant":
        return get_constant_schedule(optimizer)
    warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * total_steps)
    return get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked for; a no-op elsewhere (CPU runs stay in float32)."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _show_progress(config: TrainConfig) -> bool:
    return config.progress if config.progress is not None else sys.stderr.isatty()


@torch.inference_mode()
def evaluate(
    model: nn.Module, task: Task, loader: Iterable, config: TrainConfig, device: torch.device | None = None,
    scorers: dict | None = None,
) -> tuple[dict, list[tuple[int, int]]]:
    """Metrics on ``loader`` (plus ``scorers``' figures, see ``metrics.compute``) and the (pred, gold)
    pairs in loader order."""
    device = device or resolve_device(config.device)
    was_training = model.training
    model.eval()
    preds: list[int] = []
    golds: list[int] = []
    try:
        for batch in loader:
            with autocast(device, config.bf16):
                pred, gold = task.predict(model, move_to(batch, device))
            preds.extend(pred.reshape(-1).tolist())
            golds.extend(gold.reshape(-1).tolist())
    finally:
        model.train(was_training)
    if config.metric is None:
        raise ReconError("TrainConfig.metric is not set: the caller chooses it (e.g. the dataset's metric)")
    result = metrics_lib.compute(config.metric, preds, golds, config.negative_id, scorers)
    return result, list(zip(preds, golds))


def _notify(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


def fit(
    model: nn.Module,
    task: Task,
    train_loader: Iterable,
    dev_loader: Iterable | None,
    test_loader: Iterable | None,
    config: TrainConfig,
    callbacks: Sequence[Any] = (),
    scorers: dict | None = None,
) -> FitResult:
    """Train ``model`` on ``task``; return dev/test figures at the best dev epoch.

    Without a dev loader the last epoch counts as best. Raises :class:`TrainingDiverged` on the
    first non-finite loss. The model is left holding the best-dev weights. ``scorers`` add figures
    to every dev and test evaluation (SemEval's official score); model selection uses ``config.metric``.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    device = resolve_device(config.device)
    model.to(device)
    total_steps = _total_steps(train_loader, config)
    history: list[dict] = []
    best_score, best_epoch, best_dev, best_state = -math.inf, 0, None, None
    step = 0
    with deterministic(config.seed, config.deterministic):
        _reseed_loader(train_loader, config.seed)
        optimizer = build_optimizer(model, config, device)
        scheduler = build_scheduler(optimizer, total_steps, config)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        for epoch in range(1, config.epochs + 1):
            loss_sum, micro, n_batches, i = 0.0, 0, len(train_loader), -1
            bar = tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=not _show_progress(config))
            for i, batch in enumerate(bar):
                with autocast(device, config.bf16):
                    loss = task.loss(model, move_to(batch, device))
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(epoch, step + 1, loss_value)
                # The last group of an epoch may be short: scale by its real size so every
                # optimizer step averages over the micro-batches it contains.
                group = min(config.grad_accum, n_batches - (i // config.grad_accum) * config.grad_accum)
                (loss / group).backward()
                loss_sum += loss_value
                micro += 1
                if micro % config.grad_accum == 0 or i == n_batches - 1:
                    if config.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    micro = 0
                    bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
                    if step >= total_steps:
                        break
            row: dict = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(i + 1, 1),
                         "lr": scheduler.get_last_lr()[0]}
            if dev_loader is not None:
                dev, _ = evaluate(model, task, dev_loader, config, device, scorers)
                row.update({f"dev_{k}": v for k, v in dev.items() if k != "metric"})
                if dev["score"] > best_score:
                    best_score, best_epoch, best_dev = dev["score"], epoch, dev
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                best_epoch, best_dev = epoch, None
            history.append(row)
            _notify(callbacks, "on_epoch_end", epoch, dict(row))
            if step >= total_steps:
                break
        if best_state is not None and best_epoch != history[-1]["epoch"]:
            model.load_state_dict(best_state)
        test, test_predictions = (None, [])
        if test_loader is not None:
            test, test_predictions = evaluate(model, task, test_loader, config, device, scorers)
    result = FitResult(best_epoch, best_dev, test, history, test_predictions, step,
                       time.perf_counter() - start)
    _notify(callbacks, "on_train_end", result)
    return result


__all__ = [
    "TrainConfig", "Task", "ClassificationTask", "Callback", "FitResult", "TrainingDiverged",
    "fit", "evaluate", "deterministic", "make_loader", "move_to",
    "build_optimizer", "build_scheduler", "resolve_device", "UncorrectedAdamW",
]
