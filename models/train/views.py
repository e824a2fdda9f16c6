"""A trained model scored on test views (name swaps, OnlyC): how far its predictions lean on entity names.

    from recon.models.train.views import evaluate_views
    summaries, predictions = evaluate_views(("swap-type", "onlyc"), ds=ds, test=test, model=model,
                                            encode=encode, fmt=InputFormat.CM, config=train_cfg,
                                            id2label=id2label, original=original_preds)
    summaries["swap-type"]["flip_share"]

Views are built by ``recon.data_prep.name_swap`` from the dataset's full training split (``swap-type``,
``swap-random``) and its dev and test splits (``swap-unseen`` candidates; ``name_pools`` documents the
rules), whatever fraction the model trained on, so every trial of a study is scored on the same views.
Evaluation only: the weights are not touched, and :func:`run_finetune` runs this after training when
``FinetuneConfig.eval_views`` names views (a field outside the trial id).

Per view, ``summaries[name]`` holds:

* ``test``: the same figures as the run's ``test`` (``metrics.compute``: ``score`` in the training metric,
  micro-F1, accuracy, SemEval's official score where logged) on the view;
* ``reported``: ``{"metric", "test", "original"}``: the reported metric on the view and on the original test;
* ``flip_share``: share of examples whose prediction differs from the prediction on the original;
  ``flip_share_changed``: the same among examples whose words the view changed (``n_changed``);
* ``n``, ``format`` (what the view was rendered in), ``identity`` (the view's cache key), ``report`` (the
  swap report: swapped, typed/untyped, skipped by reason), ``pools`` (training names per type, their type
  coverage, unseen candidates and why some were rejected; empty for ``onlyc``), ``build_s`` (pools and view; the first swap view
  pays for the pools) and ``wall_s`` (encode + evaluate).

``predictions``: one dict per (view, example): ``view``, ``index`` (into the test list, as in
``predictions.jsonl``), ``source``, ``gold``, ``pred``, ``original_pred``, ``flipped``, ``changed``, and for a
changed swap example the new ``tokens`` with ``head``/``tail`` spans ``[start, end)``: what an error browser
shows beside the original sentence.

Encoded views are cached like any split (``batching.encode_examples`` under ``encoding_key``, in memory and in
the node cache); built views and name pools are memoised per process under their content identities.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

from recon.core.errors import ReconError
from recon.data_prep.example import RelationExample, examples_digest, portable_source
from recon.data_prep.formats import InputFormat
from recon.data_prep.name_pools import NamePools, build_pools, typed, typing_key
from recon.data_prep.name_swap import View, check_kinds, make_view

# (examples, format) -> (an encoded dataset the model's collate reads, its cache key or None)
Encoder = Callable[[Sequence[RelationExample], InputFormat], tuple[Any, Hashable | None]]

_POOLS: "OrderedDict[tuple, NamePools]" = OrderedDict()
_VIEWS: "OrderedDict[tuple, View]" = OrderedDict()
_MEMO_SIZE = 8


def _remember(cache: OrderedDict, key: Hashable, value: Any) -> Any:
    cache[key] = value
    while len(cache) > _MEMO_SIZE:
        cache.popitem(last=False)
    return value


def avoid_texts(path: str | None) -> list[tuple[str, ...]]:
    """Texts unseen names must avoid: a built corpus's sentences (a folder with a manifest) or a text
    file's lines (one name or sentence per line, whitespace-tokenised); none for None."""
    if not path:
        return []
    where = Path(path).expanduser()
    if where.is_dir():
        from recon.data_prep.corpus import load_corpus

        return list(dict.fromkeys(ex.tokens for ex in load_corpus(where).examples))
    if not where.is_file():
        raise ReconError(f"--view-avoid {path}: no such file or corpus folder")
    return [tuple(line.split()) for line in where.read_text(encoding="utf-8").splitlines() if line.strip()]


def pools_for(ds, *, avoid: Sequence[Sequence[str]] = (), untyped: str = "pool",
              train: Sequence[RelationExample] | None = None) -> NamePools:
    """The dataset's name pools: training names from its train split (or ``train`` where it has none),
    unseen candidates from dev and test; memoised per process by content."""
    train = list(ds.splits.get("train") or train or [])
    if not train:
        raise ReconError(f"dataset {ds.name!r}: name-swap views need training examples to draw names from")
    sources = [*ds.splits.get("dev", []), *ds.splits.get("test", [])]
    key = (examples_digest(train, sources=False), examples_digest(sources, sources=False),
           hash(tuple(map(tuple, avoid))), untyped)
    if key in _POOLS:
        _POOLS.move_to_end(key)
        return _POOLS[key]
    typed_sources = [ex for split in ("dev", "test") for ex in typed(ds.splits.get(split, []))]  # per split: cached
    return _remember(_POOLS, key, build_pools(typed(train), typed_sources, avoid, untyped=untyped))


def build_views(names: Iterable[str], ds, test: Sequence[RelationExample], *, seed: int = 0,
                avoid: Sequence[Sequence[str]] = (), untyped: str = "pool",
                train: Sequence[RelationExample] | None = None) -> dict[str, View]:
    """``{name: View}`` of ``test`` for each view name (pools built once, only when a swap view is asked)."""
    names = check_kinds(names)
    pools = None
    out = {}
    for name in names:
        if name.startswith("swap") and pools is None:
            pools = pools_for(ds, avoid=avoid, untyped=untyped, train=train)
        key = (name, seed, examples_digest(test), pools.identity if pools is not None else None)
        if key in _VIEWS:
            _VIEWS.move_to_end(key)
            out[name] = _VIEWS[key]
        else:
            whole = ds.splits.get("test")  # a capped test set reads the full split's typing cache
            out[name] = _remember(_VIEWS, key, make_view(name, test, seed=seed, pools=pools, untyped=untyped,
                                                         typing_key=typing_key(whole) if whole else None))
    return out


def evaluate_view(view: View, *, model, encode: Encoder, fmt: InputFormat, config, id2label: dict[int, str],
                  original: Sequence[int], scorers: dict | None = None, collate=None,
                  reported: str | None = None, original_score: float | None = None) -> tuple[dict, list[dict]]:
    """Score ``model`` on ``view`` rendered in ``view.format_for(fmt)``; ``original``: the label ids the model
    predicted on the original test, in test order. Returns the view's summary and its predictions."""
    from recon.models.train.finetune_data import eval_loader
    from recon.models.train.loop import ClassificationTask, evaluate

    if len(original) != len(view.examples):
        raise ReconError(f"{len(original)} original predictions for a view of {len(view.examples)} examples")
    start = time.perf_counter()
    rendered = view.format_for(fmt)
    data, key = encode(view.examples, rendered)
    loader, order = eval_loader(data, config.eval_batch_size, collate, key)
    metrics, pairs = evaluate(model, ClassificationTask(), loader, config, scorers=scorers)
    preds = [0] * len(order)
    for index, (pred, _gold) in zip(order, pairs):
        preds[index] = pred
    flips = [p != o for p, o in zip(preds, original)]
    changed = [i for i, c in enumerate(view.changed) if c]
    predictions = []
    for i, (ex, pred) in enumerate(zip(view.examples, preds)):
        row = {"view": view.kind, "index": i, "source": portable_source(ex.source), "gold": ex.label, "pred": id2label[pred],
               "original_pred": id2label[original[i]], "flipped": flips[i], "changed": view.changed[i]}
        if view.changed[i] and view.render_format is None:
            row.update(tokens=list(ex.tokens), head=[ex.head.start, ex.head.end], tail=[ex.tail.start, ex.tail.end])
        predictions.append(row)
    n = len(preds)
    summary = {
        "test": metrics, "n": n, "n_changed": len(changed), "format": rendered.value, "identity": view.identity,
        "flip_share": sum(flips) / n if n else 0.0,
        "flip_share_changed": sum(flips[i] for i in changed) / len(changed) if changed else None,
        "report": view.report.to_dict(), "seed": view.seed, "pools": view.pool_stats,
    }
    if reported is not None:
        summary["reported"] = {"metric": reported, "test": metrics.get(reported), "original": original_score}
    summary["wall_s"] = round(time.perf_counter() - start, 3)
    return summary, predictions


def evaluate_views(names: Iterable[str], *, ds, test: Sequence[RelationExample], model, encode: Encoder,
                   fmt: InputFormat, config, id2label: dict[int, str], original: Sequence[int],
                   scorers: dict | None = None, collate=None, seed: int = 0, avoid: Sequence[Sequence[str]] = (),
                   untyped: str = "pool", reported: str | None = None, original_score: float | None = None,
                   train: Sequence[RelationExample] | None = None) -> tuple[dict[str, dict], list[dict]]:
    """Every named view of ``test`` scored (see the module doc); ``({name: summary}, predictions)``.

    A view that fails (no training names to draw from, a bug) gets ``{"error": "..."}`` in place of its
    summary and the others go on: views run after training, whose results must not be lost to them.
    """
    summaries, predictions = {}, []
    for name in check_kinds(names):
        start = time.perf_counter()  # the first swap view also pays for the name pools (typing is cached on disk)
        try:
            view = build_views([name], ds, test, seed=seed, avoid=avoid, untyped=untyped, train=train)[name]
            built = time.perf_counter() - start
            summaries[name], rows = evaluate_view(view, model=model, encode=encode, fmt=fmt, config=config,
                                                  id2label=id2label, original=original, scorers=scorers,
                                                  collate=collate, reported=reported, original_score=original_score)
        except Exception as exc:  # noqa: BLE001 - a view is an extra evaluation: it never costs the run its results
            summaries[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        summaries[name]["build_s"] = round(built, 3)
        predictions.extend(rows)
    return summaries, predictions


__all__ = ["evaluate_views", "evaluate_view", "build_views", "pools_for", "avoid_texts", "Encoder"]
