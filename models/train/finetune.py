"""Supervised fine-tuning as a pure function of its config: one trial of a sweep, or one CLI run.

    from recon.models.train.finetune import FinetuneConfig, run_finetune
    cfg = FinetuneConfig(dataset="semeval", split=0.1, input_format="C+M",
                         training=TrainConfig(epochs=3, seed=43), data=DataOptions(max_eval=500))
    out = run_finetune(cfg, out_dir="runs/semeval-cm-43")
    out["test"]["score"]

The defaults live on the config classes below (``TrainConfig``: Appendix B's lr 3e-5, batch 64,
6 epochs; length 100, the dataset's; ``CnnTraining`` for the CNN); test is scored at the
best dev epoch (``recon.models.train.loop.fit``). ``max_eval`` caps dev and test to a fixed random subset so
a CPU run stays affordable; the subset is drawn with ``EVAL_SAMPLE_SEED``, not the training seed,
so the five seeds of a study are scored on the same examples and their median stays meaningful.
Using it is recorded in ``notes``: such a score is not the paper's full-test figure.
"""
from __future__ import annotations

import json
import os
import random
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from recon.core.atomic import write_text_atomic
from recon.core.config import Config, ConfigError, knob
from recon.core.defaults import DEFAULT_ENCODER
from recon.core.errors import ReconError
from recon.data_prep.example import RelationExample
from recon.data_prep.formats import FORMATS_HELP, InputFormat
from recon.core.protocol import POINTS, point_default

from recon.models.nets.cnn import CNN_DEFAULTS, DEFAULT_WORD_VECTORS
from recon.models.nets.heads import HeadOptions
from recon.models.train.loop import TrainConfig

EVAL_SAMPLE_SEED = 0
CHECKPOINT_PREFIX = "@pretrain."  # a study's pre-training stage, resolved to a directory per node


@dataclass
class DataOptions(Config):
    """Which examples a supervised run trains and is scored on (shared by every trial of a study)."""

    data_dir: str | None = knob(None, "where dataset folders live (default: $RECON_DATA_DIR, ../shared/datasets, "
                                      "~/.cache/recon/datasets)", identity=False)
    split_source: Literal["seeded", "paper"] = knob(
        "seeded", "training subsets: seeded per-relation sampling, or the released train_0.01/train_0.1 files "
                  "(seeded where a file does not exist)", choices=("seeded", "paper"))
    max_length: int | None = knob(None, "word pieces per input (default: the dataset's, 100 for supervised RE)", ge=8)
    max_eval: int | None = knob(None, "cap dev and test at K examples each (a fixed random subset; recorded in notes)",
                                ge=1)
    max_train: int | None = knob(None, "cap the training subset at K examples (a seeded random subset)", ge=1)
    on_error: Literal["raise", "skip"] = knob("raise", "bad records in dataset files: stop, or skip and count by reason",
                                              choices=("raise", "skip"))
    truncation: Literal["window", "cut"] = knob(point_default("truncation"), POINTS["truncation"].help,
                                                choices=("window", "cut"), point="truncation")
    placeholder_markers: bool = knob(point_default("placeholder_markers"), POINTS["placeholder_markers"].help,
                                     point="placeholder_markers")
    scorer: Literal["recon", "official"] = knob(point_default("scorer"), POINTS["scorer"].help,
                                                choices=("recon", "official"), identity=False, point="scorer")


@dataclass
class CnnTraining(Config):
    """The CNN baseline (Nguyen & Grishman 2015 + POS/NER/position embeddings), trained with SGD.

    The paper does not state the CNN's epochs; 100 is OpenNRE's CNN example default.
    """

    lr: float = knob(CNN_DEFAULTS["lr"], "SGD learning rate (constant schedule)", gt=0)
    batch_size: int = knob(CNN_DEFAULTS["batch_size"], "examples per SGD step", ge=1)
    hidden_size: int = knob(CNN_DEFAULTS["hidden"], "convolution filters", ge=1)
    epochs: int = knob(100, "passes over the training data", ge=1)
    max_train_steps: int | None = knob(None, "stop after this many SGD steps", ge=1)
    word_vectors: str = knob(DEFAULT_WORD_VECTORS, "initial word vectors: embedded (the embedded encoder's word-piece "
                                         "embeddings), random, or a GloVe-format text file")

    def train_config(self, seed: int, device: str) -> TrainConfig:
        """The loop's settings for the CNN: plain SGD, constant rate, no clipping or decay."""
        return TrainConfig(lr=self.lr, batch_size=self.batch_size, epochs=self.epochs, optimizer=CNN_DEFAULTS["optimizer"],
                           schedule="constant", max_grad_norm=None, weight_decay=0.0,
                           max_train_steps=self.max_train_steps, seed=seed, device=device)


def check_source_and_format(cfg: Any, path_words: str) -> None:
    """Shared by run configs: exactly one of ``dataset`` / ``path``, and a known input format (normalised)."""
    if (cfg.dataset is None) == (cfg.path is None):
        raise ConfigError("dataset", f"give either a dataset name or {path_words}, not both")
    try:
        cfg.input_format = InputFormat.parse(cfg.input_format).value
    except ReconError as exc:
        raise ConfigError("input_format", str(exc)) from None


@dataclass
class FinetuneConfig(Config):
    """Everything that determines one fine-tuning run; its :meth:`identity` is the trial id's payload."""

    dataset: str | None = knob("semeval", "registered dataset (semeval, chemprot, wiki80, tacred), or none with --path")
    path: str | None = knob(None, "a directory with train/dev/test files, in place of --dataset")
    kind: str | None = knob(None, "file format of --path: opennre, tacred, chemprot, semeval2010")
    split: float = knob(1.0, "fraction of the training set, in (0, 1] (paper: 0.01, 0.1, 1.0)", gt=0, le=1)
    input_format: str = knob(InputFormat.CM.value, FORMATS_HELP)
    model: str = knob("bert", "bert (the encoder as loaded), cnn, or a recon checkpoint directory")
    encoder: str = knob(DEFAULT_ENCODER, "encoder alias, Hugging Face name or local directory")
    data: DataOptions = knob(factory=DataOptions, help="dataset selection, input rendering and evaluation caps")
    head: HeadOptions = knob(factory=HeadOptions, help="the linear classifier of encoder models")
    training: TrainConfig = knob(factory=TrainConfig, help="optimisation of encoder models (Appendix B)")
    cnn: CnnTraining = knob(factory=CnnTraining, help="the CNN baseline's settings")
    source_identity: str | None = knob(None, "content identity of the starting checkpoint (a pre-training stage's "
                                             "hash), so a trial's id follows what it starts from", cli=False)

    def check(self) -> None:
        super().check()
        check_source_and_format(self, "a path (+ kind)")

    @property
    def seed(self) -> int:
        return self.training.seed

    @property
    def is_cnn(self) -> bool:
        return self.model == "cnn"

    def identity(self) -> dict[str, Any]:
        """What changes results: the CNN's settings for a CNN run, the encoder's otherwise.

        A checkpoint directory is a location: when ``source_identity`` names its content, the
        path itself is left out, so the same stage at another path is the same trial.
        """
        out = super().identity()
        out.pop("cnn" if not self.is_cnn else "training")
        if self.is_cnn:
            out.pop("encoder")
            out.pop("head")
            for point in ("truncation", "placeholder_markers"):  # the CNN's featurizer renders on its own
                out["data"].pop(point)
            out["seed"], out["metric"] = self.training.seed, self.training.metric
        if self.source_identity and self.model not in ("bert", "cnn"):
            out["model"] = "checkpoint"
        return out


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

    from recon.models.train.metrics import compute

    top = Counter(ex.label for ex in train).most_common(1)[0][0]
    golds = [label2id[ex.label] for ex in test]
    out = compute(metric, [label2id[top]] * len(golds), golds,
                  label2id[negative] if negative is not None else None)
    out["label"] = top
    return out


# Parsed datasets and training subsets, kept per process: the trials of a sweep that run one after
# another in a worker (Tune actor reuse) read and parse the same files once. An entry is used only
# while its files (and their folder) are unchanged on disk; the objects are shared, read-only.
_DATASETS: "OrderedDict[tuple, tuple]" = OrderedDict()
_SUBSETS: "OrderedDict[tuple, Any]" = OrderedDict()
_DATASETS_SIZE, _SUBSETS_SIZE = 4, 32


def _stamp(ds) -> tuple:
    """Size and mtime of the dataset's files and folder (a folder's mtime moves when files come or go)."""
    out = []
    for name, path in sorted(ds.files.items()) + [("", ds.directory or "")]:
        try:
            st = os.stat(path)
            out.append((name, path, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((name, path, None, None))
    return tuple(out)


def _remember(cache: OrderedDict, size: int, key: tuple, value: Any) -> None:
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)


def _dataset(cfg: FinetuneConfig):
    """``load_dataset`` for the config, parsed once per process while its files are unchanged."""
    from recon.data_prep.datadir import ENV_VAR
    from recon.data_prep.registry import load_dataset

    key = (cfg.dataset, cfg.path, cfg.kind, cfg.data.data_dir, cfg.data.on_error, os.environ.get(ENV_VAR),
           os.getcwd())
    hit = _DATASETS.get(key)
    if hit is not None:
        stamp = _stamp(hit[0])
        if stamp == hit[1]:
            _DATASETS.move_to_end(key)
            return hit[0], key + stamp
    ds = load_dataset(cfg.dataset, path=cfg.path, kind=cfg.kind, data_dir=cfg.data.data_dir,
                      on_error=cfg.data.on_error)
    stamp = _stamp(ds)
    _remember(_DATASETS, _DATASETS_SIZE, key, (ds, stamp))
    return ds, key + stamp


def _training_subset(ds, ds_key: tuple, cfg: FinetuneConfig):
    """``resolve_training_subset``, memoised with the dataset (seedless when the subset does not use the seed)."""
    from recon.data_prep.splits import resolve_training_subset

    base = (ds_key, cfg.split, cfg.data.split_source)  # ds_key: the dataset's files as they are now
    for key in (base, base + (cfg.seed,)):
        if key in _SUBSETS:
            _SUBSETS.move_to_end(key)
            return _SUBSETS[key]
    subset = resolve_training_subset(ds, cfg.split, cfg.seed, source=cfg.data.split_source)
    _remember(_SUBSETS, _SUBSETS_SIZE, base if subset.seed is None else base + (cfg.seed,), subset)
    return subset


def _load(cfg: FinetuneConfig):
    """The dataset, the training subset (with where it came from) and the full dev and test splits.

    Dev and test are checked first: a dataset without a test split is never scored on dev under
    the name test (Wiki80 here has no test file; such cells are reported as unavailable).
    """
    ds, ds_key = _dataset(cfg)
    missing = [s for s in ("dev", "test") if s not in ds.splits]
    if missing:
        raise ReconError(f"dataset {ds.name!r} has no {' or '.join(missing)} split locally "
                         f"({'; '.join(ds.notes) or 'file missing'}); fine-tuning needs train, dev and test")
    subset = _training_subset(ds, ds_key, cfg)
    train = subset.examples
    if cfg.data.max_train is not None:
        train = subsample(train, cfg.data.max_train, seed=cfg.seed)
    return ds, subset, train, ds.splits["dev"], ds.splits["test"]


def _with_types(examples: list[RelationExample], fmt: InputFormat, key: str) -> list[RelationExample]:
    """C+T / OnlyT need entity types; datasets without annotated types get spaCy's (cached)."""
    if not fmt.needs_types or all(ex.head.type and ex.tail.type for ex in examples):
        return examples
    from recon.data_prep.entity_typing import ensure_types  # spaCy: only imported when needed

    return list(ensure_types(examples, cache_key=key))


def _build_bert(cfg: FinetuneConfig, num_labels: int):
    from recon.models.nets.loading import load_encoder
    from recon.models.nets.heads import RelationClassifier
    from recon.models.nets.seed import seed_everything

    source = cfg.encoder if cfg.model == "bert" else cfg.model
    # Seed before loading too: resizing embeddings for added marker tokens samples their init
    # from the global RNG (transformers' mean_resizing), which must not depend on earlier work.
    seed_everything(cfg.seed)
    # Cached per process: a fresh model from a copy of the weights as read from disk (never a
    # previous trial's), the same as an uncached load for the same seed (see load_encoder).
    bundle = load_encoder(source, cache=True)
    seed_everything(cfg.seed)  # the classifier's initial weights depend on the seed only
    return RelationClassifier.from_options(bundle.model, num_labels, cfg.head), bundle


_EVAL_BATCHES: "OrderedDict[tuple, tuple]" = OrderedDict()
_EVAL_BATCHES_SIZE = 16


def _eval_loader(data, batch_size: int, collate, key: Any = None):
    """Length-sorted evaluation batches (less padding), collated once; returns them and their index order.

    Dev is scored after every epoch on the same batches: they are padded once per trial, and with
    ``key`` (the split's content hash) once per process. The tensors are shared, read-only.
    """
    from torch.utils.data import DataLoader

    memo = (key, batch_size, getattr(collate, "pad_id", None)) if key is not None and collate is not None else None
    if memo is not None and memo in _EVAL_BATCHES:
        _EVAL_BATCHES.move_to_end(memo)
        return _EVAL_BATCHES[memo]
    lengths = data.lengths
    order = sorted(range(len(data)), key=lengths.__getitem__)
    batches = list(DataLoader(data, batch_size=batch_size, sampler=order, collate_fn=collate))
    if memo is not None:
        _remember(_EVAL_BATCHES, _EVAL_BATCHES_SIZE, memo, (batches, order))
    return batches, order


@dataclass
class _Setup:
    """What differs between the BERT-style and CNN models: the model and its three datasets."""

    model: Any
    train: Any
    dev: Any
    test: Any
    collate: Any
    keys: tuple = (None, None, None)  # content hashes of the three encoded splits (BERT-style models)
    notes: list = field(default_factory=list)
    truncation: dict = field(default_factory=dict)  # per split: examples / truncated / context_split / entity_truncated


def _bert_setup(cfg: FinetuneConfig, fmt: InputFormat, ds, splits: dict, label2id: dict, max_length: int) -> _Setup:
    from recon.models.train.batching import Collator, encode_examples, encoded_cache_dir, encoding_key

    model, bundle = _build_bert(cfg, len(label2id))
    data, keys = {}, []
    for split, examples in splits.items():
        # A content hash: the examples themselves, format, tokenizer, max_length, label ids.
        rendering = {"truncation": cfg.data.truncation, "placeholder_markers": cfg.data.placeholder_markers}
        key = encoding_key(examples, fmt, bundle.tokenizer, bundle.special, max_length, label2id, **rendering)
        keys.append(key)
        data[split] = encode_examples(examples, fmt, bundle.tokenizer, bundle.special, max_length, label2id,
                                      cache_key=key, cache_dir=encoded_cache_dir(), **rendering)
    names = list(splits)
    truncated = sum(d.n_truncated for d in data.values())
    cut = sum(d.n_entity_truncated for d in data.values())
    if cfg.data.truncation == "cut":
        lost = sum(d.n_marker_cut for d in data.values())
        notes = [f"{truncated} examples longer than {max_length} word pieces were cut at {max_length} (the authors' "
                 f"truncation): {cut} lost entity pieces, {lost} read the relation from an ordinary word "
                 "(a start marker was cut)"] if truncated else []
    else:
        notes = [f"{truncated} examples longer than {max_length} word pieces were windowed around the entities; "
                 f"{cut} had an entity longer than the window cut"] if truncated else []
    stats = {name.split("/")[0].split("@")[0]: d.truncation_stats() for name, d in zip(names, data.values())}
    pad_id = bundle.tokenizer.pad_token_id if bundle.tokenizer.pad_token_id is not None else 0
    return _Setup(model, data[names[0]], data[names[1]], data[names[2]], Collator(pad_id), keys=tuple(keys),
                  notes=notes, truncation=stats)


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

    from recon.models.nets.cnn import build_cnn

    names = list(splits)
    special = SpecialTokens.for_vocab(())  # the CNN's own vocabulary: readable marker names
    feat = CNNFeaturizer(max_length=max_length).fit(splits[names[0]], fmt, special)
    # Word vectors: the embedded encoder's word-piece embeddings by default (test micro-F1 0.608 vs
    # 0.478 from random on SemEval 10%, median of 5 seeds: bench/bench_cnn_vectors.py), or GloVe.
    model, notes = build_cnn(feat, len(label2id), hidden_size=cfg.cnn.hidden_size, word_vectors=cfg.cnn.word_vectors,
                             encoder=cfg.encoder, seed=cfg.seed)
    data = [FeatureDataset(feat.transform(xs), [label2id[x.label] for x in xs], [x.source for x in xs])
            for xs in splits.values()]
    return _Setup(model, *data, collate=None, notes=notes)


def run_finetune(cfg: FinetuneConfig, callbacks: Sequence[Any] = (), out_dir: str | os.PathLike | None = None
                 ) -> dict:
    """Fine-tune and evaluate; returns JSON-able metrics, and writes them (and predictions) to ``out_dir``.

    ``metric`` (``dev.score``) selects the best epoch; ``reported`` is what the tables print for this
    dataset under ``data.scorer`` (SemEval's official score with ``official``), at that epoch.
    """
    from recon.core.protocol import describe
    from recon.data_prep.registry import reported_metric

    from recon.models.train.metrics import label_scorers
    from recon.models.train.loop import ClassificationTask, fit, make_loader, resolve_device

    start = time.perf_counter()
    fmt = InputFormat.parse(cfg.input_format)
    ds, subset, train, dev_all, test_all = _load(cfg)
    max_eval = cfg.data.max_eval
    dev, test = subsample(dev_all, max_eval), subsample(test_all, max_eval)
    label2id = ds.label2id()
    negative_id = label2id[ds.negative_label] if ds.negative_label is not None else None
    max_length = cfg.data.max_length or ds.max_length
    notes = list(ds.notes)
    split_source = subset.source_used
    split_name = f"train@{cfg.split:g}/{subset.describe()}"
    if subset.note:
        notes.append(subset.note)
    splits = {split_name: train, f"dev/max{max_eval}": dev, f"test/max{max_eval}": test}
    splits = {name: _with_types(xs, fmt, f"{ds.name}:{name}") for name, xs in splits.items()}
    if max_eval is not None and (len(dev) < len(dev_all) or len(test) < len(test_all)):
        notes.append(f"evaluation capped by max_eval={max_eval}: dev {len(dev)} of {len(dev_all)}, "
                     f"test {len(test)} of {len(test_all)} (random subset, seed {EVAL_SAMPLE_SEED}); "
                     "not comparable with full-test figures")
    setup = (_cnn_setup if cfg.model == "cnn" else _bert_setup)(cfg, fmt, ds, splits, label2id, max_length)
    notes.extend(setup.notes)
    base = cfg.cnn.train_config(cfg.seed, cfg.training.device) if cfg.is_cnn else cfg.training
    train_cfg = base.replace(metric=cfg.training.metric or ds.metric, negative_id=negative_id,
                             eval_batch_size=cfg.training.eval_batch_size, progress=cfg.training.progress)
    train_loader = make_loader(setup.train, train_cfg.batch_size, shuffle=True, seed=cfg.seed, collate_fn=setup.collate)
    dev_loader, _ = _eval_loader(setup.dev, train_cfg.eval_batch_size, setup.collate, setup.keys[1])
    test_loader, test_order = _eval_loader(setup.test, train_cfg.eval_batch_size, setup.collate, setup.keys[2])
    id2label = {i: label for label, i in label2id.items()}
    # The benchmark's official score (SemEval's) is logged beside micro-F1 whichever the tables report.
    official = reported_metric(ds.name, "official")
    scorers = label_scorers([official] if official != train_cfg.metric else [], id2label, ds.negative_label)
    result = fit(setup.model, ClassificationTask(), train_loader, dev_loader, test_loader, train_cfg, callbacks,
                 scorers=scorers)
    reported = reported_metric(ds.name, cfg.data.scorer) if cfg.training.metric is None else train_cfg.metric

    by_index = sorted(zip(test_order, result.test_predictions))
    predictions = [{"source": setup.test.sources[i], "gold": id2label[g], "pred": id2label[p]}
                   for i, (p, g) in by_index]
    out = {
        "dataset": ds.name, "split": cfg.split, "split_source": split_source, "format": fmt.value,
        "model": cfg.model, "encoder": cfg.encoder if cfg.model == "bert" else None, "seed": cfg.seed,
        "metric": train_cfg.metric, "negative_label": ds.negative_label, "protocol": describe(cfg),
        "reported": {"metric": reported, "test": (result.test_at_best or {}).get(reported),
                     "dev": (result.best_dev or {}).get(reported)},
        "dev": result.best_dev, "test": result.test_at_best, "best_epoch": result.best_epoch,
        "history": result.history, "steps": result.steps,
        "n_train": len(train), "n_dev": len(dev), "n_test": len(test),
        "split_source_requested": cfg.data.split_source, "train_file": subset.file,
        "skipped_records": dict(ds.skipped) | {f"subset:{k}": v for k, v in subset.report.skipped.items()},
        "truncation": setup.truncation,
        "majority_baseline_test": majority_baseline(train, test, label2id, ds.negative_label, train_cfg.metric),
        "train_config": asdict(train_cfg), "device": str(resolve_device(train_cfg.device)),
        "wall_s": round(time.perf_counter() - start, 3), "fit_s": round(result.wall_s, 3),
        "notes": notes, "config": asdict(cfg),
    }
    if out_dir is not None:
        out_path = Path(out_dir)
        write_text_atomic(out_path / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in predictions))
        write_text_atomic(out_path / "metrics.json", json.dumps(out, indent=2) + "\n")
    return out


__all__ = ["FinetuneConfig", "DataOptions", "CnnTraining", "run_finetune", "subsample", "majority_baseline",
           "EVAL_SAMPLE_SEED", "CHECKPOINT_PREFIX"]
