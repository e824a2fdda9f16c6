"""Supervised fine-tuning as a pure function of its config: one trial of a sweep, or one CLI run.

    from recon.models.train.finetune_config import FinetuneConfig
    from recon.models.train.finetune import run_finetune
    cfg = FinetuneConfig(dataset="semeval", split=0.1, input_format="C+M",
                         training=TrainConfig(epochs=3, seed=43), data=DataOptions(max_eval=500))
    out = run_finetune(cfg, out_dir="runs/semeval-cm-43")
    out["test"]["score"]

The defaults live on the config classes (``finetune_config``; ``TrainConfig``: Appendix B's lr 3e-5, batch 64,
6 epochs; length 100, the dataset's; ``CnnTraining`` for the CNN); the examples come from
``finetune_data``; test is scored at the
best dev epoch (``recon.models.train.loop.fit``). ``max_eval`` caps dev and test to a fixed random subset so
a CPU run stays affordable; the subset is drawn with ``EVAL_SAMPLE_SEED``, not the training seed,
so the five seeds of a study are scored on the same examples and their median stays meaningful.
Using it is recorded in ``notes``: such a score is not the paper's full-test figure.

``eval_views`` (``--eval-views swap-type swap-unseen swap-random onlyc``) also scores the trained weights on
test views after training (``recon.models.train.views``): ``out["views"][name]`` holds each view's figures
and flip share, ``view_predictions.jsonl`` its predictions paired with ``predictions.jsonl`` by ``index``.
``keep_weights`` (``--keep-weights``) also writes the trained model (``weights.safetensors``), and
:func:`evaluate_kept` scores such weights on views later, rebuilding the model from the same config, without
training (``recon.orchestration.study.kept`` runs it for views added to a finished study).
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from recon.core.atomic import write_texts_or_keep
from recon.core.errors import ReconError
from recon.data_prep.example import portable_source
from recon.data_prep.formats import InputFormat
from recon.models.train.finetune_config import EVAL_SAMPLE_SEED, FinetuneConfig
from recon.models.train.finetune_data import eval_loader, load_splits, majority_baseline, subsample, with_types


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


@dataclass
class _Setup:
    """What differs between the BERT-style and CNN models: the model and its three datasets."""

    model: Any
    train: Any
    dev: Any
    test: Any
    collate: Any
    keys: tuple = (None, None, None)  # content hashes of the three encoded splits (BERT-style models)
    encode: Any = None  # (examples, format) -> (dataset, cache key): test views encoded as the splits were
    notes: list = field(default_factory=list)
    truncation: dict = field(default_factory=dict)  # per split: examples / truncated / context_split / entity_truncated


def _bert_setup(cfg: FinetuneConfig, fmt: InputFormat, ds, splits: dict, label2id: dict, max_length: int) -> _Setup:
    from recon.models.train.batching import Collator, encode_examples, encoded_cache_dir, encoding_key

    model, bundle = _build_bert(cfg, len(label2id))
    rendering = {"truncation": cfg.data.truncation, "placeholder_markers": cfg.data.placeholder_markers}

    def encode(examples, as_format: InputFormat):
        # A content hash: the examples themselves, format, tokenizer, max_length, label ids.
        key = encoding_key(examples, as_format, bundle.tokenizer, bundle.special, max_length, label2id, **rendering)
        return encode_examples(examples, as_format, bundle.tokenizer, bundle.special, max_length, label2id,
                               cache_key=key, cache_dir=encoded_cache_dir(), **rendering), key

    data, keys = {}, []
    for split, examples in splits.items():
        data[split], key = encode(examples, fmt)
        keys.append(key)
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
                  notes=notes, truncation=stats, encode=encode)


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

    def encode(examples, as_format: InputFormat):
        featurizer = feat if as_format is feat.fmt else copy.copy(feat)  # vocabularies shared, format changed
        featurizer.fmt = as_format
        return FeatureDataset(featurizer.transform(examples), [label2id[x.label] for x in examples],
                              [x.source for x in examples]), None

    data = [encode(xs, fmt)[0] for xs in splits.values()]
    return _Setup(model, *data, collate=None, notes=notes, encode=encode)


@dataclass
class _Prepared:
    """A trial's model (untrained), data and evaluation settings, built from its config alone: what training
    starts from, and what an evaluation of kept weights rebuilds (the same encoder, head, label map, format,
    max_length, examples and encodings)."""

    fmt: InputFormat
    ds: Any
    subset: Any
    train: list
    dev: list
    test: list
    n_dev_all: int
    n_test_all: int
    splits: dict
    setup: _Setup
    train_cfg: Any
    label2id: dict
    id2label: dict
    scorers: dict
    reported: str
    notes: list
    test_examples: list  # the test split as the views read it (with the entity types the format needs)


def _prepare(cfg: FinetuneConfig) -> _Prepared:
    from recon.data_prep.registry import reported_metric

    from recon.models.train.metrics import label_scorers

    fmt = InputFormat.parse(cfg.input_format)
    ds, subset, train, dev_all, test_all = load_splits(cfg)
    max_eval = cfg.data.max_eval
    dev, test = subsample(dev_all, max_eval), subsample(test_all, max_eval)
    label2id = ds.label2id()
    negative_id = label2id[ds.negative_label] if ds.negative_label is not None else None
    max_length = cfg.data.max_length or ds.max_length
    notes = list(ds.notes)
    split_name = f"train@{cfg.split:g}/{subset.describe()}"
    if subset.note:
        notes.append(subset.note)
    splits = {split_name: train, f"dev/max{max_eval}": dev, f"test/max{max_eval}": test}
    splits = {name: with_types(xs, fmt, f"{ds.name}:{name}") for name, xs in splits.items()}
    if max_eval is not None and (len(dev) < len(dev_all) or len(test) < len(test_all)):
        notes.append(f"evaluation capped by max_eval={max_eval}: dev {len(dev)} of {len(dev_all)}, "
                     f"test {len(test)} of {len(test_all)} (random subset, seed {EVAL_SAMPLE_SEED}); "
                     "not comparable with full-test figures")
    setup = (_cnn_setup if cfg.model == "cnn" else _bert_setup)(cfg, fmt, ds, splits, label2id, max_length)
    notes.extend(setup.notes)
    base = cfg.cnn.train_config(cfg.seed, cfg.training.device) if cfg.is_cnn else cfg.training
    train_cfg = base.replace(metric=cfg.training.metric or ds.metric, negative_id=negative_id,
                             eval_batch_size=cfg.training.eval_batch_size, progress=cfg.training.progress)
    id2label = {i: label for label, i in label2id.items()}
    # The benchmark's official score (SemEval's) is logged beside micro-F1 whichever the tables report.
    official = reported_metric(ds.name, "official")
    scorers = label_scorers([official] if official != train_cfg.metric else [], id2label, ds.negative_label)
    reported = reported_metric(ds.name, cfg.data.scorer) if cfg.training.metric is None else train_cfg.metric
    return _Prepared(fmt, ds, subset, train, dev, test, len(dev_all), len(test_all), splits, setup, train_cfg,
                     label2id, id2label, scorers, reported, notes, splits[f"test/max{max_eval}"])


def _score_views(cfg: FinetuneConfig, prep: _Prepared, names, original: list[int],
                 original_score: float | None) -> tuple[dict, list[dict]]:
    """The model in ``prep`` scored on the named test views (``recon.models.train.views``)."""
    from recon.models.train.views import avoid_texts, evaluate_views

    return evaluate_views(
        names, ds=prep.ds, test=prep.test_examples, model=prep.setup.model, encode=prep.setup.encode,
        fmt=prep.fmt, config=prep.train_cfg, id2label=prep.id2label, original=original, scorers=prep.scorers,
        collate=prep.setup.collate, seed=cfg.view_seed, avoid=avoid_texts(cfg.view_avoid), untyped=cfg.view_untyped,
        reported=prep.reported, original_score=original_score, train=prep.train)


def run_finetune(cfg: FinetuneConfig, callbacks: Sequence[Any] = (), out_dir: str | os.PathLike | None = None,
                 dev_predictions: bool = False) -> dict:
    """Fine-tune and evaluate; returns JSON-able metrics, and writes them (and predictions) to ``out_dir``.

    ``metric`` (``dev.score``) selects the best epoch; ``reported`` is what the tables print for this
    dataset under ``data.scorer`` (SemEval's official score with ``official``), at that epoch.
    ``dev_predictions`` (with ``out_dir``) also writes ``dev_predictions.jsonl``: the dev predictions of
    the best-dev weights ``fit`` leaves in the model (one more dev pass), which reproduce ``dev``'s score;
    a sweep's paired bootstrap over dev examples reads them. Off by default: nothing else changes.
    ``keep_weights`` (with ``out_dir``) also writes those weights (``weights.safetensors``,
    ``recon.models.train.weights``), named in ``out["weights"]``: :func:`evaluate_kept` scores them on views
    added later.
    """
    from recon.core.protocol import describe

    from recon.models.train.loop import ClassificationTask, fit, make_loader, precision, resolve_device

    start = time.perf_counter()
    prep = _prepare(cfg)
    setup, train_cfg, id2label, scorers, reported = prep.setup, prep.train_cfg, prep.id2label, prep.scorers, prep.reported
    ds, subset, train, dev, test, notes = prep.ds, prep.subset, prep.train, prep.dev, prep.test, prep.notes
    train_loader = make_loader(setup.train, train_cfg.batch_size, shuffle=True, seed=cfg.seed, collate_fn=setup.collate)
    dev_loader, dev_order = eval_loader(setup.dev, train_cfg.eval_batch_size, setup.collate, setup.keys[1])
    test_loader, test_order = eval_loader(setup.test, train_cfg.eval_batch_size, setup.collate, setup.keys[2])
    result = fit(setup.model, ClassificationTask(), train_loader, dev_loader, test_loader, train_cfg, callbacks,
                 scorers=scorers)

    by_index = sorted(zip(test_order, result.test_predictions))
    # keyed by the example's portable identity (semeval/test.txt:12), not this node's cache path
    predictions = [{"source": portable_source(setup.test.sources[i]), "gold": id2label[g], "pred": id2label[p]}
                   for i, (p, g) in by_index]
    views, view_predictions = {}, []
    if cfg.eval_views:  # the trained weights scored on test views (recon.models.train.views)
        views, view_predictions = _score_views(cfg, prep, cfg.eval_views, [p for _, (p, _) in by_index],
                                               (result.test_at_best or {}).get(reported))
        notes.extend(f"test view {name} failed: {v['error']}" for name, v in views.items() if "error" in v)
    out = {
        "dataset": ds.name, "split": cfg.split, "split_source": subset.source_used, "format": prep.fmt.value,
        "model": cfg.model, "encoder": cfg.encoder if cfg.model == "bert" else None, "seed": cfg.seed,
        "metric": train_cfg.metric, "negative_label": ds.negative_label, "protocol": describe(cfg),
        "reported": {"metric": reported, "test": (result.test_at_best or {}).get(reported),
                     "dev": (result.best_dev or {}).get(reported)},
        "dev": result.best_dev, "test": result.test_at_best, "best_epoch": result.best_epoch,
        "history": result.history, "steps": result.steps,
        "n_train": len(train), "n_dev": len(dev), "n_test": len(test),
        "split_source_requested": cfg.data.split_source, "train_file": portable_source(str(subset.file)) if subset.file else None,
        "skipped_records": dict(ds.skipped) | {f"subset:{k}": v for k, v in subset.report.skipped.items()},
        "truncation": setup.truncation,
        "majority_baseline_test": majority_baseline(train, test, prep.label2id, ds.negative_label, train_cfg.metric),
        "train_config": asdict(train_cfg), "device": str(resolve_device(train_cfg.device)),
        "precision": precision(resolve_device(train_cfg.device), train_cfg.bf16, train_cfg.cpu_bf16),
        "wall_s": round(time.perf_counter() - start, 3), "fit_s": round(result.wall_s, 3),
        "notes": notes, "config": asdict(cfg), "views": views,
    }
    if out_dir is not None:  # computed results are never lost: a failed write keeps them elsewhere, named
        files = {"predictions.jsonl": "".join(json.dumps(p) + "\n" for p in predictions)}
        if dev_predictions:
            from recon.models.train.loop import evaluate

            _, pairs = evaluate(setup.model, ClassificationTask(), dev_loader, train_cfg, scorers=scorers)
            rows = [{"source": portable_source(setup.dev.sources[i]), "gold": id2label[g], "pred": id2label[p]}
                    for i, (p, g) in sorted(zip(dev_order, pairs))]
            files["dev_predictions.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows)
        if view_predictions:
            files["view_predictions.jsonl"] = "".join(json.dumps(p) + "\n" for p in view_predictions)
        if cfg.keep_weights:
            from recon.models.train.weights import save_weights

            try:
                out["weights"] = save_weights(setup.model, out_dir)
            except OSError as exc:  # the results still count; the plan then prices views as retraining
                notes.append(f"weights not kept: {exc}")
        files["metrics.json"] = json.dumps(out, indent=2) + "\n"
        kept, error = write_texts_or_keep(out_dir, files)
        out["saved_to"], out["save_error"] = str(kept), error
    return out


def evaluate_kept(cfg: FinetuneConfig, weights: str | os.PathLike, stored_predictions: Sequence[dict] = ()) -> dict:
    """Score a finished trial's kept weights on ``cfg.eval_views`` without training: the model is rebuilt
    from ``cfg`` (the trial's config: same encoder, head, label map, format, max_length, examples), the
    weights loaded, the original test predicted again and then each view.

    The recomputed test predictions are the flip shares' reference; ``stored_predictions`` (the trial's
    ``predictions.jsonl`` rows) are compared with them by portable example id, and any difference is refused:
    weights that do not reproduce the trial's predictions would give views of another model.
    Returns ``{"views", "view_predictions", "test", "predictions_checked", "wall_s"}``.
    """
    from recon.models.train.loop import ClassificationTask, evaluate, resolve_device
    from recon.models.train.weights import load_weights

    start = time.perf_counter()
    prep = _prepare(cfg)
    model = load_weights(prep.setup.model, weights).to(resolve_device(prep.train_cfg.device))
    loader, order = eval_loader(prep.setup.test, prep.train_cfg.eval_batch_size, prep.setup.collate, prep.setup.keys[2])
    test, pairs = evaluate(model, ClassificationTask(), loader, prep.train_cfg, scorers=prep.scorers)
    original = [0] * len(order)
    for index, (pred, _gold) in zip(order, pairs):
        original[index] = pred
    sources = [portable_source(s) for s in prep.setup.test.sources]
    checked = 0
    if stored_predictions:
        stored = {row["source"]: row["pred"] for row in stored_predictions}
        differ = [s for s, p in zip(sources, original) if stored.get(s, prep.id2label[p]) != prep.id2label[p]]
        unmatched = [s for s in sources if s not in stored]
        if differ or unmatched:
            raise ReconError(f"kept weights {weights} do not reproduce the trial's test predictions: {len(differ)} of "
                             f"{len(sources)} differ (first {differ[:3]}), {len(unmatched)} not in predictions.jsonl; "
                             "the views were not scored")
        checked = len(sources)
    views, rows = _score_views(cfg, prep, cfg.eval_views, original, test.get(prep.reported))
    return {"views": views, "view_predictions": rows, "test": test, "predictions_checked": checked,
            "predictions": [{"source": s, "pred": prep.id2label[p]} for s, p in zip(sources, original)],
            "wall_s": round(time.perf_counter() - start, 3)}


__all__ = ["run_finetune", "evaluate_kept", "FeatureDataset"]
