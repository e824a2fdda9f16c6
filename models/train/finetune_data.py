"""The examples a fine-tuning run reads: the dataset and its training subset (parsed once per process while
their files are unchanged), capped evaluation subsets, entity types where a format needs them, and
length-sorted evaluation batches."""
from __future__ import annotations

import os
import random
from collections import OrderedDict
from typing import Any, Sequence

from recon.core.errors import ReconError
from recon.data_prep.example import RelationExample
from recon.data_prep.formats import InputFormat
from recon.models.train.finetune_config import EVAL_SAMPLE_SEED, FinetuneConfig



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


def load_splits(cfg: FinetuneConfig):
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


def with_types(examples: list[RelationExample], fmt: InputFormat, key: str) -> list[RelationExample]:
    """C+T / OnlyT need entity types; datasets without annotated types get spaCy's (cached)."""
    if not fmt.needs_types or all(ex.head.type and ex.tail.type for ex in examples):
        return examples
    from recon.data_prep.entity_typing import ensure_types  # spaCy: only imported when needed

    return list(ensure_types(examples, cache_key=key))


_EVAL_BATCHES: "OrderedDict[tuple, tuple]" = OrderedDict()
_EVAL_BATCHES_SIZE = 16


def eval_loader(data, batch_size: int, collate, key: Any = None):
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


__all__ = ["subsample", "majority_baseline", "load_splits", "with_types", "eval_loader"]
