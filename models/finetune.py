"""Supervised fine-tuning as a pure function of its config: one trial of a sweep, or one CLI run.

    from recon.models.finetune import FinetuneConfig, run_finetune
    out = run_finetune(FinetuneConfig(dataset="semeval", split=0.1, input_format="C+M", seed=42,
                                      epochs=3, max_eval=500), out_dir="runs/semeval-cm-42")
    out["test"]["score"]

Appendix B defaults: lr 3e-5, batch 64, 6 epochs, length 100 (the dataset's), test scored at the
best dev epoch (``recon.models.training.fit``). ``max_eval`` caps dev and test to a fixed random subset so
a CPU run stays affordable; the subset is drawn with ``EVAL_SAMPLE_SEED``, not the training seed,
so the five seeds of a study are scored on the same examples and their median stays meaningful.
Using it is recorded in ``notes``: such a score is not the paper's full-test figure.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from recon.data_prep.atomic import write_text_atomic
from recon.data_prep.errors import ReconError
from recon.data_prep.example import RelationExample
from recon.data_prep.formats import InputFormat

EVAL_SAMPLE_SEED = 0
BERT_DEFAULTS = {"lr": 3e-5, "batch_size": 64, "epochs": 6}


@dataclass
class FinetuneConfig:
    """Everything that determines one fine-tuning run (and nothing that does not)."""

    dataset: str | None = "semeval"  # registered name, or None with path + kind
    path: str | None = None
    kind: str | None = None
    data_dir: str | None = None
    split: float = 1.0  # 0.01 / 0.1 / 1.0 of the training set
    split_source: str = "seeded"  # "seeded" (hash-ranked, per relation) or "paper" (shipped files)
    input_format: str = "C+M"
    model: str = "bert"  # "bert" (the encoder as loaded), "cnn", or a recon checkpoint directory
    encoder: str = "minilm"
    seed: int = 42
    epochs: int | None = None  # None: 6 (BERT) / the CNN default
    batch_size: int | None = None  # None: 64 (BERT) / 160 (CNN)
    lr: float | None = None  # None: 3e-5 (BERT) / 0.5 (CNN, SGD)
    max_length: int | None = None  # None: the dataset's (100 for supervised RE)
    max_eval: int | None = None  # cap on dev and test examples each
    max_train_steps: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    eval_batch_size: int = 128
    device: str = "auto"
    progress: bool | None = None
    extra: dict = field(default_factory=dict)  # free-form tags carried into the result

    def __post_init__(self) -> None:
        if (self.dataset is None) == (self.path is None):
            raise ReconError("FinetuneConfig needs either dataset or path (+ kind), not both")
        InputFormat.parse(self.input_format)  # fail early on an unknown format
        if self.max_eval is not None and self.max_eval < 1:
            raise ReconError(f"max_eval must be positive, got {self.max_eval}")


def subsample(examples: Sequence[RelationExample], cap: int | None, seed: int = EVAL_SAMPLE_SEED
              ) -> list[RelationExample]:
    """At most ``cap`` examples, a seeded random subset kept in file order (all when cap is None)."""
    if cap is None or len(examples) <= cap:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), cap))
    return [examples[i] for i in keep]


def majority_baseline(train: Sequence[RelationExample], test: Sequence[RelationExample],
                      label2id: dict[str, int], negative: str | None, metric: str) -> dict:
    """Score of always predicting the most frequent training label (0 micro-F1 when it is the negative)."""
    from collections import Counter

    from .metrics import compute

    top = Counter(ex.label for ex in train).most_common(1)[0][0]
    golds = [label2id[ex.label] for ex in test]
    out = compute(metric, [label2id[top]] * len(golds), golds,
                  label2id[negative] if negative is not None else None)
    out["label"] = top
    return out


def _load(cfg: FinetuneConfig):
    from recon.data_prep.registry import load_dataset
    from recon.data_prep.splits import training_subset

    ds = load_dataset(cfg.dataset, path=cfg.path, kind=cfg.kind, data_dir=cfg.data_dir)
    train = training_subset(ds, cfg.split, cfg.seed, source=cfg.split_source)
    missing = [s for s in ("dev", "test") if s not in ds.splits]
    if missing:
        raise ReconError(f"dataset {ds.name!r} has no {' or '.join(missing)} split locally "
                         f"({'; '.join(ds.notes) or 'file missing'}); fine-tuning needs train, dev and test")
    return ds, train, ds.splits["dev"], ds.splits["test"]


def _with_types(examples: list[RelationExample], fmt: InputFormat, key: str) -> list[RelationExample]:
    """C+T / OnlyT need entity types; datasets without annotated types get spaCy's (cached)."""
    if not fmt.needs_types or all(ex.head.type and ex.tail.type for ex in examples):
        return examples
    from recon.data_prep.entity_typing import ensure_types  # spaCy: only imported when needed

    return list(ensure_types(examples, cache_key=key))


def _build_bert(cfg: FinetuneConfig, num_labels: int):
    from .encoder import load_encoder
    from .heads import RelationClassifier
    from .training import seed_everything

    source = cfg.encoder if cfg.model == "bert" else cfg.model
    # Seed before loading too: resizing embeddings for added marker tokens samples their init
    # from the global RNG (transformers' mean_resizing), which must not depend on earlier work.
    seed_everything(cfg.seed)
    bundle = load_encoder(source)
    seed_everything(cfg.seed)  # the classifier's initial weights depend on the seed only
    return RelationClassifier(bundle.model, num_labels), bundle


def _eval_loader(data, batch_size: int, collate):
    """Length-sorted evaluation batches (less padding); returns the loader and its index order."""
    from torch.utils.data import DataLoader

    lengths = data.lengths
    order = sorted(range(len(data)), key=lengths.__getitem__)
    return DataLoader(data, batch_size=batch_size, sampler=order, collate_fn=collate), order


@dataclass
class _Setup:
    """What differs between the BERT-style and CNN models: the model and its three datasets."""

    model: Any
    train: Any
    dev: Any
    test: Any
    collate: Any
    lr: float
    batch_size: int
    optimizer: str = "adamw"
    notes: list = field(default_factory=list)


def _bert_setup(cfg: FinetuneConfig, fmt: InputFormat, ds, splits: dict, label2id: dict, max_length: int) -> _Setup:
    from .batching import Collator, encode_examples

    model, bundle = _build_bert(cfg, len(label2id))
    tok_name = f"{bundle.source}:{len(bundle.tokenizer)}"
    data = {}
    for split, examples in splits.items():
        key = (ds.name, tuple(sorted(ds.files.items())), split, len(examples), fmt.value, tok_name, max_length)
        data[split] = encode_examples(examples, fmt, bundle.tokenizer, bundle.special, max_length, label2id,
                                      cache_key=key)
    names = list(splits)
    truncated = sum(d.n_truncated for d in data.values())
    notes = [f"{truncated} examples longer than {max_length} tokens were windowed around the entities"] if truncated else []
    pad_id = bundle.tokenizer.pad_token_id if bundle.tokenizer.pad_token_id is not None else 0
    return _Setup(model, data[names[0]], data[names[1]], data[names[2]], Collator(pad_id),
                  cfg.lr or BERT_DEFAULTS["lr"], cfg.batch_size or BERT_DEFAULTS["batch_size"], notes=notes)


class FeatureDataset:
    """Rows of the CNN featurizer's tensors plus the label, as dicts the default collate stacks."""

    def __init__(self, features: dict, labels: Sequence[int], sources: Sequence[str]) -> None:
        import torch

        self.features, self.sources = features, list(sources)
        self.labels = torch.tensor(list(labels), dtype=torch.long)
        self.lengths = features["mask"].sum(1).tolist()

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict:
        return {**{k: v[index] for k, v in self.features.items()}, "labels": self.labels[index]}


def _cnn_setup(cfg: FinetuneConfig, fmt: InputFormat, ds, splits: dict, label2id: dict, max_length: int) -> _Setup:
    """Nguyen & Grishman's CNN: vocabularies fitted on train only, SGD lr 0.5, batch 160."""
    from recon.data_prep.cnn_features import CNNFeaturizer
    from recon.data_prep.special_tokens import SpecialTokens

    from .cnn import CNN_DEFAULTS, CNNClassifier, CNNConfig
    from .training import seed_everything

    names = list(splits)
    special = SpecialTokens.for_vocab(())  # the CNN's own vocabulary: readable marker names
    feat = CNNFeaturizer(max_length=max_length).fit(splits[names[0]], fmt, special)
    seed_everything(cfg.seed)
    model = CNNClassifier(CNNConfig(num_labels=len(label2id), **feat.vocab_sizes()))
    data = [FeatureDataset(feat.transform(xs), [label2id[x.label] for x in xs], [x.source for x in xs])
            for xs in splits.values()]
    return _Setup(model, *data, collate=None, lr=cfg.lr or CNN_DEFAULTS["lr"],
                  batch_size=cfg.batch_size or CNN_DEFAULTS["batch_size"], optimizer=CNN_DEFAULTS["optimizer"])


def run_finetune(cfg: FinetuneConfig, callbacks: Sequence[Any] = (), out_dir: str | os.PathLike | None = None
                 ) -> dict:
    """Fine-tune and evaluate; returns JSON-able metrics, and writes them (and predictions) to ``out_dir``."""
    from .training import ClassificationTask, TrainConfig, fit, make_loader, resolve_device

    start = time.perf_counter()
    fmt = InputFormat.parse(cfg.input_format)
    ds, train, dev_all, test_all = _load(cfg)
    dev, test = subsample(dev_all, cfg.max_eval), subsample(test_all, cfg.max_eval)
    label2id = ds.label2id()
    negative_id = label2id[ds.negative_label] if ds.negative_label is not None else None
    max_length = cfg.max_length or ds.max_length
    notes = list(ds.notes)
    split_name = f"train@{cfg.split:g}/{cfg.split_source}" + ("" if cfg.split_source == "paper" else f"/seed{cfg.seed}")
    splits = {split_name: train, f"dev/max{cfg.max_eval}": dev, f"test/max{cfg.max_eval}": test}
    splits = {name: _with_types(xs, fmt, f"{ds.name}:{name}") for name, xs in splits.items()}
    if cfg.max_eval is not None and (len(dev) < len(dev_all) or len(test) < len(test_all)):
        notes.append(f"evaluation capped by max_eval={cfg.max_eval}: dev {len(dev)} of {len(dev_all)}, "
                     f"test {len(test)} of {len(test_all)} (random subset, seed {EVAL_SAMPLE_SEED}); "
                     "not comparable with full-test figures")
    setup = (_cnn_setup if cfg.model == "cnn" else _bert_setup)(cfg, fmt, ds, splits, label2id, max_length)
    notes.extend(setup.notes)
    is_sgd = setup.optimizer == "sgd"
    train_cfg = TrainConfig(
        lr=setup.lr, batch_size=setup.batch_size, epochs=cfg.epochs or BERT_DEFAULTS["epochs"],
        optimizer=setup.optimizer, schedule="constant" if is_sgd else "linear",
        max_grad_norm=None if is_sgd else 1.0, warmup_ratio=cfg.warmup_ratio,
        weight_decay=0.0 if is_sgd else cfg.weight_decay, seed=cfg.seed, device=cfg.device,
        metric=ds.metric, negative_id=negative_id, max_train_steps=cfg.max_train_steps, progress=cfg.progress,
    )
    train_loader = make_loader(setup.train, setup.batch_size, shuffle=True, seed=cfg.seed, collate_fn=setup.collate)
    dev_loader, _ = _eval_loader(setup.dev, cfg.eval_batch_size, setup.collate)
    test_loader, test_order = _eval_loader(setup.test, cfg.eval_batch_size, setup.collate)
    result = fit(setup.model, ClassificationTask(), train_loader, dev_loader, test_loader, train_cfg, callbacks)

    id2label = {i: label for label, i in label2id.items()}
    by_index = sorted(zip(test_order, result.test_predictions))
    predictions = [{"source": setup.test.sources[i], "gold": id2label[g], "pred": id2label[p]}
                   for i, (p, g) in by_index]
    out = {
        "dataset": ds.name, "split": cfg.split, "split_source": cfg.split_source, "format": fmt.value,
        "model": cfg.model, "encoder": cfg.encoder if cfg.model == "bert" else None, "seed": cfg.seed,
        "metric": ds.metric, "negative_label": ds.negative_label,
        "dev": result.best_dev, "test": result.test_at_best, "best_epoch": result.best_epoch,
        "history": result.history, "steps": result.steps,
        "n_train": len(train), "n_dev": len(dev), "n_test": len(test),
        "majority_baseline_test": majority_baseline(train, test, label2id, ds.negative_label, ds.metric),
        "train_config": asdict(train_cfg), "device": str(resolve_device(cfg.device)),
        "wall_s": round(time.perf_counter() - start, 3),
        "notes": notes, "config": asdict(cfg),
    }
    if out_dir is not None:
        out_path = Path(out_dir)
        write_text_atomic(out_path / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in predictions))
        write_text_atomic(out_path / "metrics.json", json.dumps(out, indent=2) + "\n")
    return out


__all__ = ["FinetuneConfig", "run_finetune", "subsample", "majority_baseline", "EVAL_SAMPLE_SEED"]
