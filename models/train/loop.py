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
from typing import Any, Iterable, Iterator, Protocol, Sequence, Sized, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader

from recon.core.errors import ReconError

from recon.models.nets.seed import seed_everything
from recon.models.train.config import TrainConfig
from recon.models.train.optim import build_optimizer, build_scheduler
from recon.models.train import metrics as metrics_lib


class TrainingDiverged(ReconError):
    """The loss became NaN or infinite; training stops at once rather than wasting the budget."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(
            f"training diverged: loss is {loss} at epoch {epoch}, step {step} "
            "(lower the learning rate, or check the inputs of that batch)"
        )


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


def _total_steps(train_loader: Sized, config: TrainConfig) -> int:
    per_epoch = math.ceil(len(train_loader) / config.grad_accum)
    total = per_epoch * config.epochs
    if config.max_train_steps is not None:
        total = min(total, config.max_train_steps)
    return max(total, 1)



def autocast(device: torch.device, bf16: bool, cpu_bf16: bool = False):
    """bf16 autocast on CUDA (``bf16``) or on a CPU (``cpu_bf16``) when asked for; float32 otherwise."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision(device: torch.device, bf16: bool, cpu_bf16: bool = False) -> str:
    """What :func:`autocast` computes in on ``device``, for results and the console ("bf16 (CPU, AMX-BF16)")."""
    from recon.core.hardware import cpu_bf16_name

    if device.type == "cuda" and bf16:
        return "bf16 (CUDA)"
    if device.type == "cpu" and cpu_bf16:
        return f"bf16 (CPU, {cpu_bf16_name() if cpu_bf16_name() != 'none' else 'emulated'})"
    return "float32"


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
            with autocast(device, config.bf16, config.cpu_bf16):
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
                with autocast(device, config.bf16, config.cpu_bf16):
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
    "resolve_device",
]
