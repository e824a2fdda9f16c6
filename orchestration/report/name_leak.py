"""What names leak: is a test example's entity pair (or a mention) already in the training data?

The paper's Section 2 asks whether models relate entities from the context or from their names.
Per test example of a fine-tuning trial we record

* ``pair_train``: its unordered entity pair occurs in that trial's fine-tuning training subset
  (re-derived from the trial's config with ``load_dataset`` + ``resolve_training_subset``, the
  same call the trainer makes, so seeded subsets differ per seed);
* ``head_train`` / ``tail_train``: the mention alone occurs there (as head or tail of any example);
* for models pre-trained by a stage of the study (``@pretrain.<stage>``), the same against the
  pre-training corpus: ``pair_pretrain``, ``head_pretrain``, ``tail_pretrain``.

Matching is best effort, by normalised name: a mention's key is its text with Unicode NFKC, lower
case, punctuation and white space removed (the key the corpus exclusion uses:
``recon.data_prep.corpus.kg.normalise_name``); a pair also matches by its two knowledge-base ids
when both mentions carry one (Wiki80 / FewRel / the corpus's Wikidata ids). Corpus rows contribute
both the mention as written in the sentence and the linked entity's name. An alias the corpus never
spells the same way is missed, so ``unseen`` means "not found by name".

A prediction is joined with its test example by the example's portable identity
(``recon.data_prep.example.ExampleIndex``); predictions that join no test example loaded here are
counted, logged and noted in ``name_leak.md``.

The metric (micro-F1 without the negative class, or accuracy) is then computed separately on seen
and unseen examples, per trial, and the median over seeds is reported per (model, format):
``name_leak.csv`` / ``name_leak.md``, a plot per dataset, and ``name_leak_examples.csv.gz`` with
the flags per test example. ``tp_share_seen`` is the share of a cell's true positives that fall on
seen pairs: "how much of OnlyM's score comes from pairs seen in training"; comparing the
seen - unseen ``gap`` of a CP model with its base model says whether CP narrows it.
"""
from __future__ import annotations

import json
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from recon.data_prep.example import ExampleIndex, RelationExample
from recon.orchestration.study.trial import PAPER_DATASET_NAMES, Trial
from recon.orchestration.report.joins import unjoined_message
from recon.orchestration.report.significance import example_counts, f1_from_counts, negative_label
from recon.orchestration.report.plots import save_figure

SCOPES = ("train", "pretrain")
NOT_LOADED = "their sources are not among the test examples the report loaded, or name one with another gold label"


def normalise(name: str) -> str:
    """NFKC, lower case, punctuation and white space removed (``kg.normalise_name``'s key)."""
    text = unicodedata.normalize("NFKC", name or "").lower()
    return "".join(ch for ch in text if not ch.isspace() and not unicodedata.category(ch).startswith("P"))


def pair_of(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


@dataclass
class NameIndex:
    """Normalised mention names, unordered name pairs and knowledge-base id pairs of a set of examples."""

    names: set = field(default_factory=set)
    pairs: set = field(default_factory=set)
    ids: set = field(default_factory=set)
    id_pairs: set = field(default_factory=set)

    def add(self, head: Iterable[str], tail: Iterable[str], head_id: Optional[str] = None,
            tail_id: Optional[str] = None) -> None:
        heads = {n for n in (normalise(h) for h in head) if n}
        tails = {n for n in (normalise(t) for t in tail) if n}
        self.names |= heads | tails
        self.pairs |= {pair_of(h, t) for h in heads for t in tails}
        if head_id and tail_id:
            self.id_pairs.add(pair_of(head_id, tail_id))
        for kb in (head_id, tail_id):
            if kb:
                self.ids.add(kb)

    def seen(self, head: str, tail: str, head_id: Optional[str] = None, tail_id: Optional[str] = None
             ) -> tuple[bool, bool, bool]:
        """(pair seen, head seen, tail seen)."""
        h, t = normalise(head), normalise(tail)
        pair = (bool(h and t) and pair_of(h, t) in self.pairs) or \
               (bool(head_id and tail_id) and pair_of(head_id, tail_id) in self.id_pairs)
        return (pair, (bool(h) and h in self.names) or (head_id in self.ids if head_id else False),
                (bool(t) and t in self.names) or (tail_id in self.ids if tail_id else False))


def mention(example, entity) -> str:
    return " ".join(example.tokens[entity.start:entity.end])


def index_examples(examples: Iterable) -> NameIndex:
    """A :class:`NameIndex` of ``RelationExample`` s (mention text; kb ids when present)."""
    index = NameIndex()
    for ex in examples:
        index.add([mention(ex, ex.head)], [mention(ex, ex.tail)], ex.head.kb_id, ex.tail.kb_id)
    return index


def _corpus_rows(directory: Path) -> Iterable[dict]:
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    for shard in manifest.get("shards", []):
        for name in shard.get("files", []):
            path = directory / name
            if path.suffix == ".parquet":
                import pyarrow.parquet as pq

                yield from pq.read_table(path).to_pylist()
                continue
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)


def index_corpus(directory: str | Path) -> NameIndex:
    """A :class:`NameIndex` of a built pre-training corpus (manifest + shard rows), streamed once."""
    index = NameIndex()
    for row in _corpus_rows(Path(directory)):
        tokens = row.get("tokens") or []
        head = [row.get("head_name") or "", " ".join(tokens[int(row["head_start"]):int(row["head_end"])])]
        tail = [row.get("tail_name") or "", " ".join(tokens[int(row["tail_start"]):int(row["tail_end"])])]
        index.add(head, tail, row.get("head_id"), row.get("tail_id"))
    return index


class TrialData:
    """Training indexes and test examples per trial, loaded once per (dataset, subset).

    :meth:`test_example` is the join of a prediction with its test example; the predictions it
    cannot join are counted per dataset in ``unjoined`` (with the first few sources in ``unjoined_sources``).
    """

    def __init__(self, data_dir: Optional[str] = None) -> None:
        self.data_dir = data_dir
        self._datasets: dict = {}
        self._train: dict = {}
        self._tests: dict = {}
        self.joined: Counter = Counter()
        self.unjoined: Counter = Counter()
        self.unjoined_sources: dict[str, list[str]] = {}

    def dataset(self, cfg):
        key = (cfg.dataset, cfg.path, cfg.kind)
        if key not in self._datasets:
            from recon.data_prep.registry import load_dataset

            data_dir = cfg.data.data_dir or self.data_dir
            self._datasets[key] = load_dataset(cfg.dataset, path=cfg.path, kind=cfg.kind, data_dir=data_dir,
                                               on_error="skip")
        return self._datasets[key]

    def train_index(self, trial: Trial) -> NameIndex:
        from recon.data_prep.splits import resolve_training_subset
        from recon.models.train.finetune_data import subsample

        cfg = trial.runner_config()
        # a paper file is the same for every seed, but it may fall back to seeded sampling: key by seed
        key = (cfg.dataset, cfg.path, cfg.split, cfg.data.split_source, cfg.data.max_train, cfg.seed)
        if key not in self._train:
            ds = self.dataset(cfg)
            subset = resolve_training_subset(ds, cfg.split, cfg.seed, source=cfg.data.split_source)
            train = subset.examples
            if cfg.data.max_train is not None:
                train = subsample(train, cfg.data.max_train, seed=cfg.seed)
            self._train[key] = index_examples(train)
        return self._train[key]

    def tests(self, trial: Trial) -> ExampleIndex:
        """The trial's test examples by portable identity."""
        cfg = trial.runner_config()
        key = (cfg.dataset, cfg.path, cfg.kind)
        if key not in self._tests:
            self._tests[key] = ExampleIndex(self.dataset(cfg).splits.get("test", []))
        return self._tests[key]

    def test_example(self, trial: Trial, source: str, gold: Optional[str] = None) -> Optional[RelationExample]:
        """The test example a prediction of ``trial`` names (any form of its source; with the prediction's
        ``gold`` label when given), counted when missing."""
        example = self.tests(trial).get(source, gold)
        if example is None:
            self.unjoined[trial.dataset] += 1
            sample = self.unjoined_sources.setdefault(trial.dataset, [])
            if source not in sample and len(sample) < 3:
                sample.append(source)
        else:
            self.joined[trial.dataset] += 1
        return example

    def unjoined_lines(self, part: str, what: str = "predictions") -> list[str]:
        """One :func:`unjoined_message` per dataset with predictions that joined no test example."""
        return [unjoined_message(part, n, n + self.joined[dataset], f"{dataset} {what}",
                                 NOT_LOADED, self.unjoined_sources.get(dataset, ()))
                for dataset, n in self.unjoined.items() if n]


def example_flags(trials: Sequence[Trial], predictions: Mapping[str, dict], data: TrialData,
                  corpora: Mapping[str, NameIndex]) -> pd.DataFrame:
    """One row per (trial, test example): labels, the mentions and the seen flags of every scope."""
    rows = []
    for trial in trials:
        if trial.kind != "finetune" or trial.trial_id not in predictions:
            continue
        train = data.train_index(trial)
        corpus = corpora.get(trial.model)
        for source, pred in predictions[trial.trial_id].items():
            ex = data.test_example(trial, source, pred.get("gold"))
            if ex is None:  # counted in data.unjoined; the analysis says so
                continue
            head, tail = mention(ex, ex.head), mention(ex, ex.tail)
            ids = (ex.head.kb_id, ex.tail.kb_id)
            pair, h, t = train.seen(head, tail, *ids)
            row = {"trial_id": trial.trial_id, "dataset": trial.dataset, "setting": trial.setting,
                   "format": trial.format, "model": trial.model, "seed": trial.seed, "metric": trial.metric,
                   "source": source, "head": head, "tail": tail, "gold": pred["gold"], "pred": pred["pred"],
                   "pair_train": pair, "head_train": h, "tail_train": t}
            if corpus is not None:
                pair, h, t = corpus.seen(head, tail, *ids)
                row.update(pair_pretrain=pair, head_pretrain=h, tail_pretrain=t)
            else:
                row.update(pair_pretrain=None, head_pretrain=None, tail_pretrain=None)
            rows.append(row)
    return pd.DataFrame(rows)


def _score(part: pd.DataFrame, negative: Optional[str], metric: str = "micro_f1") -> tuple[float, float]:
    """(metric, true positives) of prediction rows."""
    if part.empty:
        return float("nan"), 0.0
    rows = {str(i): {"gold": g, "pred": p} for i, (g, p) in enumerate(zip(part["gold"], part["pred"]))}
    counts = example_counts(rows, list(rows), negative, metric).sum(axis=0)
    return float(f1_from_counts(counts)), float(counts[..., 0].sum())


def seen_unseen(flags: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, setting, model, format, scope): metric on seen / unseen pairs (median over seeds)."""
    if flags.empty:
        return pd.DataFrame()
    out = []
    for (dataset, setting), group in flags.groupby(["dataset", "setting"], sort=False):
        metric = group["metric"].iloc[0]
        negative = negative_label(set(group["gold"]) | set(group["pred"]), metric)
        for scope in SCOPES:
            column = f"pair_{scope}"
            usable = group[group[column].notna()]
            for (model, fmt), cell in usable.groupby(["model", "format"], sort=False):
                per_seed = []
                for seed, trial in cell.groupby("seed"):
                    seen = trial[trial[column].astype(bool)]
                    unseen = trial[~trial[column].astype(bool)]
                    m_seen, tp_seen = _score(seen, negative, metric)
                    m_unseen, tp_unseen = _score(unseen, negative, metric)
                    m_all, _ = _score(trial, negative, metric)
                    mention_seen = (trial[f"head_{scope}"].astype(bool) | trial[f"tail_{scope}"].astype(bool)).mean()
                    per_seed.append({"n_seen": len(seen), "n_unseen": len(unseen), "metric_all": m_all,
                                     "metric_seen": m_seen, "metric_unseen": m_unseen,
                                     "tp_share_seen": tp_seen / (tp_seen + tp_unseen) if tp_seen + tp_unseen
                                     else float("nan"), "mention_seen_share": float(mention_seen)})
                seeds = pd.DataFrame(per_seed)
                med = seeds.median(numeric_only=True)
                out.append({"dataset": dataset, "setting": setting, "model": model, "format": fmt, "scope": scope,
                            "metric": cell["metric"].iloc[0], "seeds": len(seeds),
                            "n_seen": int(seeds["n_seen"].median()), "n_unseen": int(seeds["n_unseen"].median()),
                            "metric_all": med["metric_all"], "metric_seen": med["metric_seen"],
                            "metric_unseen": med["metric_unseen"],
                            "gap": med["metric_seen"] - med["metric_unseen"],
                            "tp_share_seen": med["tp_share_seen"], "mention_seen_share": med["mention_seen_share"]})
    return pd.DataFrame(out)


def plot_seen_unseen(table: pd.DataFrame, dataset: str, out_file: Path, scope: str = "train") -> Path:
    """Bars: per setting (panel) and format (group), each model's metric on seen (solid) / unseen (hatched) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recon.orchestration.report.tables import setting_order

    data = table[(table["dataset"] == dataset) & (table["scope"] == scope)]
    settings = sorted(data["setting"].unique(), key=setting_order)
    fig, axes = plt.subplots(1, max(1, len(settings)), figsize=(4.2 * max(1, len(settings)), 3.8), squeeze=False,
                             sharey=True)
    models = list(dict.fromkeys(data["model"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, setting in zip(axes[0], settings):
        part = data[data["setting"] == setting]
        formats = list(dict.fromkeys(part["format"]))
        width = 0.8 / max(1, 2 * len(models))
        for i, model in enumerate(models):
            rows = part[part["model"] == model].set_index("format").reindex(formats)
            for j, (col, hatch) in enumerate((("metric_seen", None), ("metric_unseen", "//"))):
                x = np.arange(len(formats)) + (2 * i + j) * width - 0.4 + width / 2
                ax.bar(x, rows[col].fillna(0) * 100, width, color=colours[i % len(colours)], hatch=hatch,
                       edgecolor="black", linewidth=0.5,
                       label=f"{model} {'seen' if j == 0 else 'unseen'}")
        ax.set_xticks(range(len(formats)), formats)
        ax.set_title(f"{PAPER_DATASET_NAMES.get(dataset, dataset)} {setting}")
        ax.grid(axis="y", alpha=0.3)
    metric = data["metric"].iloc[0] if len(data) else "metric"
    axes[0][0].set_ylabel(f"{metric} x100 (median over seeds)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"entity pair seen in {'fine-tuning training data' if scope == 'train' else 'pre-training corpus'}"
                 " vs unseen", fontsize=9)
    return save_figure(fig, out_file)


def write_markdown(table: pd.DataFrame, path: Path, notes: Sequence[str] = ()) -> Path:
    lines = ["# What names leak: test examples whose entity pair was seen vs unseen", "",
             *(f"**{note}**" for note in notes), *([""] if notes else []),
             "scope train: the pair occurs in the trial's fine-tuning training subset; pretrain: in the",
             "pre-training corpus of the model's stage (matched by normalised mention text, or both KB ids).",
             "Metric x100, median over seeds; gap = seen - unseen; tp_share_seen = share of true positives on",
             "seen pairs; mention_seen = share of examples with at least one mention seen.", "",
             "| dataset | setting | model | format | scope | n seen | n unseen | all | seen | unseen | gap | "
             "tp_share_seen | mention_seen |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def pct(v):
        return "" if pd.isna(v) else f"{100 * v:.1f}"

    for r in table.itertuples(index=False):
        lines.append(f"| {PAPER_DATASET_NAMES.get(r.dataset, r.dataset)} | {r.setting} | {r.model} | {r.format} | "
                     f"{r.scope} | {r.n_seen} | {r.n_unseen} | {pct(r.metric_all)} | {pct(r.metric_seen)} | "
                     f"{pct(r.metric_unseen)} | {pct(r.gap)} | {pct(r.tp_share_seen)} | {pct(r.mention_seen_share)} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def name_leak_analysis(trials: Sequence[Trial], predictions: Mapping[str, dict], out_dir: Path, *,
                       data_dir: Optional[str] = None, corpora: Optional[Mapping[str, str | Path]] = None,
                       log: Callable[[str], None] = print) -> list[Path]:
    """Flags per example, the seen / unseen table and plots; returns the written files.

    ``corpora`` maps a model name to its pre-training corpus directory (models without one get no
    ``pretrain`` scope); a corpus that cannot be read is reported through ``log`` and skipped.
    """
    indexes: dict[str, NameIndex] = {}
    by_dir: dict[str, NameIndex] = {}
    for model, directory in (corpora or {}).items():
        key = str(directory)
        try:
            if key not in by_dir:
                by_dir[key] = index_corpus(directory)
            indexes[model] = by_dir[key]
        except (OSError, ValueError, KeyError) as err:
            log(f"name leak: cannot read the pre-training corpus of {model} at {directory}: {err}")
    data = TrialData(data_dir)
    try:
        flags = example_flags(trials, predictions, data, indexes)
    except Exception as err:  # noqa: BLE001 - a dataset that cannot be loaded here: no analysis, say why
        log(f"name leak: skipped ({type(err).__name__}: {err})")
        return []
    notes = [f"{line}; left out of the table" for line in data.unjoined_lines("name leak")]
    for note in notes:
        log(note)
    if flags.empty:
        return []
    table = seen_unseen(flags)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "name_leak.csv", out_dir / "name_leak_examples.csv.gz"]
    table.to_csv(paths[0], index=False)
    flags.drop(columns=["metric"]).to_csv(paths[1], index=False)
    paths.append(write_markdown(table, out_dir / "name_leak.md", notes))
    for dataset in table["dataset"].unique():
        for scope in SCOPES:
            if ((table["dataset"] == dataset) & (table["scope"] == scope)).any():
                suffix = "" if scope == "train" else "_pretrain"
                paths.append(plot_seen_unseen(table, dataset, out_dir / f"name_leak_{dataset}{suffix}.png", scope))
    return paths


def pretrain_corpora(spec) -> dict[str, Path]:
    """Model name -> the built pre-training corpus of its stage, where one exists here (never built now)."""
    from recon.models.pretrain.config import DEMO_CORPUS

    out = {}
    for model in spec.models:
        stage = spec.pretrain.get(model.pretrain_ref) if model.pretrain_ref else None
        if stage is None:
            continue
        if stage.corpus != DEMO_CORPUS:
            directory = spec.resolve_path(stage.corpus)
        else:
            try:
                from recon.orchestration.study.runner import study_storage
                from recon.orchestration.study.stages import demo_corpus_dir

                storage = study_storage(spec)
                if "://" in storage.uri:
                    continue
                directory = demo_corpus_dir(storage, spec.evaluated_datasets())
            except Exception:  # noqa: BLE001 - no local storage: no pre-training lookup
                continue
        if (Path(directory) / "manifest.json").is_file():
            out[model.name] = Path(directory)
    return out


def analysis(context) -> list[Path]:
    """Report part: metrics on test examples whose names were / were not seen in training or pre-training."""
    if not context.predictions:
        return []
    return name_leak_analysis(context.trials, context.predictions, context.out_dir, data_dir=context.data_dir,
                              corpora=pretrain_corpora(context.spec), log=context.log)

__all__ = ["analysis", "pretrain_corpora", "normalise", "NameIndex", "index_examples", "index_corpus", "TrialData", "example_flags",
           "seen_unseen", "plot_seen_unseen", "name_leak_analysis"]
