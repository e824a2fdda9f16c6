"""Compute estimates for studies and sweeps: one cost table and one formula per kind of work.

Deliberately simple and labelled as estimates: fine-tuning costs example-epochs (training examples x
epochs, plus evaluation passes at :data:`EVAL_COST_FRACTION` of a training example) times a seconds-per-
example figure of the encoder; pre-training costs steps x positive pairs x a seconds-per-pair figure
(two sentences at length 64, scaled by the run's length). Studies and sweeps override the figures
(``seconds_per_example`` / ``seconds_per_pair``) with what they measured.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from recon.data_prep.registry import expected_train_size, paper_split_sizes

# Seconds per training example (forward + backward) and per positive pair of pre-training at length 64.
# Rough figures: bert-base ("encoder") on one modern GPU; MiniLM-L6 on one CPU core (the demo's measured
# 0.035 s per example at length 48); the CNN.
SECONDS_PER_EXAMPLE = {"cnn": 0.0003, "minilm": 0.035, "encoder": 0.004}
SECONDS_PER_PAIR = {"minilm": 0.06, "encoder": 0.004}
EVAL_COST_FRACTION = 1 / 3
PAIR_LENGTH = 64


def encoder_kind(encoder: Optional[str]) -> str:
    """``minilm`` for the embedded MiniLM (any spelling of it), else ``encoder`` (BERT-base-sized)."""
    return "minilm" if "minilm" in (encoder or "").lower() else "encoder"


def train_size(dataset: str, split: float, max_train: Optional[int] = None) -> int:
    size = expected_train_size(dataset, split)
    return min(size, max_train) if max_train else size


def finetune_example_epochs(dataset: str, split: float, data: Mapping[str, Any], training: Mapping[str, Any]) -> float:
    """Training examples x epochs (capped by ``max_train_steps``) + dev after every epoch and test once,
    each at :data:`EVAL_COST_FRACTION` of a training example (best-epoch selection, test at the best)."""
    epochs = training["epochs"]
    _, dev, test = (s or 0 for s in paper_split_sizes(dataset))
    if data.get("max_eval"):
        dev, test = min(dev, data["max_eval"]), min(test, data["max_eval"])
    trained = train_size(dataset, split, data.get("max_train")) * epochs
    if training.get("max_train_steps"):
        trained = min(trained, training["max_train_steps"] * training["batch_size"])
    return trained + (dev * epochs + test) * EVAL_COST_FRACTION


def fewshot_example_epochs(n_way: int, k_shot: int, settings: Mapping[str, Any]) -> float:
    """Training and evaluation episodes of N*K support + N*Q query sentences."""
    per_episode = n_way * (k_shot + settings["q_query"])
    return settings["train_episodes"] * per_episode + settings["eval_episodes"] * per_episode * EVAL_COST_FRACTION


def pretrain_seconds(steps: int, pairs_per_step: float, max_length: int, kind: str,
                     seconds_per_pair: Optional[float] = None) -> float:
    """Steps x pairs x seconds per pair (the figure at length 64, scaled by ``max_length``)."""
    per_pair = seconds_per_pair if seconds_per_pair is not None else SECONDS_PER_PAIR[kind] * max_length / PAIR_LENGTH
    return steps * pairs_per_step * per_pair


def note(per_example: Mapping[str, float] | float, per_pair: Mapping[str, float] | float) -> str:
    return (f"ESTIMATE: example-epochs x seconds per example ({per_example}), evaluation at "
            f"{EVAL_COST_FRACTION:.2f} of a training example; pre-training steps x pairs x seconds per pair "
            f"({per_pair} at length {PAIR_LENGTH})")


__all__ = ["SECONDS_PER_EXAMPLE", "SECONDS_PER_PAIR", "EVAL_COST_FRACTION", "encoder_kind", "train_size",
           "finetune_example_epochs", "fewshot_example_epochs", "pretrain_seconds", "note"]
