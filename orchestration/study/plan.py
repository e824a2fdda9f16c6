"""Expand a study spec into trials (``recon.orchestration.study.trial``), find the ones whose data is
missing here, and summarise the plan with its compute estimate (``recon.orchestration.study.estimate``).

A trial's id is a hash of the canonical JSON of every field that changes its result (dataset,
split, split source, input format, seed, the model's definition, training settings, evaluation
caps), and of nothing else: not the model's display name, not the table it appears in, not file
locations. Hence

* re-running a study skips trials whose id is already finished in MLflow;
* a cell shared by two tables (TACRED 100% BERT C+M is in Tables 1 and 5) is trained once;
* two model entries with the same definition are rejected (they would be the same trial).

"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from recon.core.hashing import stable_hash
from recon.models.train.fewshot import FewshotConfig, FewshotSettings
from recon.models.train.finetune_config import FinetuneConfig
from recon.orchestration.study import estimate
from recon.orchestration.study.spec import ModelSpec, SpecError, StudySpec
from recon.orchestration.study.trial import Trial, cell_label, nk_label, split_label, trial_id


def _model_source(spec: StudySpec, model: ModelSpec) -> tuple[str, Optional[str]]:
    """(the runner's model/encoder reference, content identity of a pre-training stage or None)."""
    if model.kind == "cnn":
        return "cnn", None
    if model.pretrain_ref:
        return model.checkpoint or "", spec.stage_hash(model.pretrain_ref)
    if model.checkpoint:
        return str(spec.resolve_path(model.checkpoint)), None
    return "bert", None


def finetune_config(spec: StudySpec, dataset: str, split: float, fmt: str, model: ModelSpec,
                    seed: int, eval_views: Iterable[str] = (), keep_weights: bool = False) -> FinetuneConfig:
    """The exact config a supervised trial's trainer receives (``eval_views``: its grid's test views;
    ``keep_weights``: whether its trained weights are kept for views added later; both outside the trial id)."""
    source, identity = _model_source(spec, model)
    return FinetuneConfig(dataset=dataset, split=split, input_format=fmt, model=source,
                          encoder=spec.encoder_of(model) or spec.encoder, data=spec.data, head=spec.head,
                          training=spec.training.replace(seed=seed), cnn=spec.cnn, source_identity=identity,
                          eval_views=tuple(eval_views), keep_weights=keep_weights)


def fewshot_config(spec: StudySpec, dataset: str, n: int, k: int, fmt: str, model: ModelSpec) -> FewshotConfig:
    """The exact config a few-shot trial's trainer receives (the model is its encoder)."""
    source, identity = _model_source(spec, model)
    encoder = spec.encoder_of(model) or spec.encoder if source == "bert" else source
    return FewshotConfig(dataset=dataset, n_way=n, k_shot=k, input_format=fmt, encoder=encoder,
                         settings=spec.fewshot.settings if spec.fewshot else FewshotSettings(),
                         source_identity=identity)


def _check_distinct_models(spec: StudySpec) -> None:
    seen: dict[str, str] = {}
    for model in spec.models:
        source, identity = _model_source(spec, model)
        key = stable_hash([source, identity, spec.encoder_of(model)])
        if key in seen:
            raise SpecError(f"models {seen[key]!r} and {model.name!r} have the same definition; they would be the same trials")
        seen[key] = model.name


def expand(spec: StudySpec) -> list[Trial]:
    """Every trial of the study, in a stable order, cells shared by several tables merged."""
    _check_distinct_models(spec)
    by_id: dict[str, Trial] = {}
    order: list[str] = []

    def add(kind: str, cfg: Any, table: str, **labels: Any) -> None:
        tid = trial_id(kind, cfg, spec.trainer)
        if tid in by_id:
            old = by_id[tid]
            config = old.config
            views = list(dict.fromkeys([*config.get("eval_views", ()), *cfg.to_dict().get("eval_views", ())]))
            if views != list(config.get("eval_views", ())):  # two grids ask for views of one trial: all of them
                config = {**config, "eval_views": views}
            if cfg.to_dict().get("keep_weights") and not config.get("keep_weights"):  # kept if any grid keeps it
                config = {**config, "keep_weights": True}
            if table not in old.tables or config is not old.config:
                tables = old.tables + (table,) if table not in old.tables else old.tables
                by_id[tid] = Trial(**{**asdict(old), "tables": tables, "config": config})
            return
        by_id[tid] = Trial(trial_id=tid, kind=kind, tables=(table,), config=cfg.to_dict(), **labels)
        order.append(tid)

    for grid in spec.grids:
        for dataset in grid.datasets:
            for split in grid.splits:
                for model in spec.grid_models(grid.models):
                    for fmt in grid.formats:
                        for seed in grid.seeds or spec.seeds:
                            cfg = finetune_config(spec, dataset, split, fmt, model, seed, grid.eval_views,
                                                  spec.keeps_weights(grid))
                            add("finetune", cfg, grid.table, dataset=dataset, setting=split_label(split),
                                format=fmt, model=model.name, seed=seed)
    if spec.fewshot is not None:
        fs = spec.fewshot
        for dataset in fs.datasets:
            for nk in fs.nk:
                n, k = (int(x) for x in nk.split("-"))
                for model in spec.grid_models(fs.models):
                    if model.kind == "cnn":
                        raise SpecError(f"fewshot.models: {model.name!r} is a CNN; few-shot needs an encoder model")
                    for fmt in fs.formats:
                        cfg = fewshot_config(spec, dataset, n, k, fmt, model)
                        add("fewshot", cfg, "table6", dataset=dataset, setting=nk_label(nk), format=fmt,
                            model=model.name, seed=cfg.seed)
    return [by_id[i] for i in order]


# ---------------------------------------------------------------- data availability

def unavailable_trials(spec: StudySpec, trials: Iterable[Trial], data_dir: Optional[str]) -> dict[str, str]:
    """trial id -> why it cannot run here, for every trial whose data is missing (files only, no parsing).

    Supervised cells need train (the fraction's released file or a train file to sample from), dev
    and test; a dataset without a test split is unavailable, never scored on dev. Few-shot cells
    need their evaluation file and, when they train, the Wiki80 files they train on.
    """
    from recon.data_prep.registry import check_available

    cache: dict[tuple, list[str]] = {}

    def reasons(name: str, **kwargs: Any) -> list[str]:
        key = (name, *sorted(kwargs.items()))
        if key not in cache:
            cache[key] = check_available(name, data_dir=data_dir, **kwargs)
        return cache[key]

    out: dict[str, str] = {}
    for trial in trials:
        c = trial.config
        if trial.kind == "finetune":
            found = reasons(c["dataset"], split=c["split"], split_source=c["data"]["split_source"])
        else:
            found = list(reasons(c["dataset"], needs=("val",)))
            if c["settings"]["train_episodes"] > 0:
                found += [f"few-shot training data: {r}" for r in
                          reasons("wiki80", needs=("train", "dev"), split=0.1, split_source="paper")]
        if found:
            out[trial.trial_id] = "; ".join(found)
    return out


def unavailable_cells(trials: Iterable[Trial], missing: dict[str, str]) -> list[dict[str, Any]]:
    """The unavailable trials grouped by cell: ``{"cell", "tables", "trials", "reason"}``."""
    cells: dict[str, dict[str, Any]] = {}
    for trial in trials:
        if trial.trial_id in missing:
            row = cells.setdefault(cell_label(trial), {"cell": cell_label(trial), "tables": list(trial.tables),
                                                       "trials": 0, "reason": missing[trial.trial_id]})
            row["trials"] += 1
    return list(cells.values())


def seconds_per_example(spec: StudySpec, model_name: str) -> float:
    """The spec's measured figure for a model, else the table's for its encoder (or the CNN)."""
    if model_name in spec.seconds_per_example:
        return spec.seconds_per_example[model_name]
    model = spec.model(model_name)
    kind = "cnn" if model.kind == "cnn" else estimate.encoder_kind(spec.encoder_of(model))
    return estimate.SECONDS_PER_EXAMPLE[kind]


def example_epochs(trial: Trial) -> float:
    """A trial's work in example-epochs (``recon.orchestration.study.estimate``)."""
    c = trial.config
    if trial.kind == "finetune":
        return estimate.finetune_example_epochs(trial.dataset, c["split"], c["data"],
                                                c["cnn"] if c["model"] == "cnn" else c["training"])
    return estimate.fewshot_example_epochs(c["n_way"], c["k_shot"], c["settings"])


def views_lacking(trials: Iterable[Trial], runs: dict[str, Any]) -> dict[str, list[str]]:
    """Finished trial id -> the test views its grid asks for that its MLflow run has no figures of.

    Views are evaluations outside the trial id, so a trial that finished before its grid asked for a view
    stays finished: a run does not train it again. A trial that kept its weights gets such a view from them
    (``recon.orchestration.study.kept``); one that did not can only have it by training again.
    """
    out: dict[str, list[str]] = {}
    for trial in trials:
        run = runs.get(trial.trial_id)
        wanted = (trial.config or {}).get("eval_views") or ()
        if run is None or not wanted:
            continue
        logged = {key.split("/")[1] for key in run.data.metrics if key.startswith("view/")}
        lacking = [view for view in wanted if view not in logged]
        if lacking:
            out[trial.trial_id] = lacking
    return out


@dataclass
class PlanSummary:
    """What ``recon study plan`` prints."""

    study: str
    trials: int
    finished: int
    per_table: dict[str, dict[str, int]]
    pretrain_stages: dict[str, dict[str, Any]]
    estimated_hours_total: float
    estimated_hours_remaining: float
    note: str
    unavailable: list[dict[str, Any]] = field(default_factory=list)  # cells that cannot run here, and why
    # finished trials without some test view their grid asks for: views, count, what having them costs
    views_lacking: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(spec: StudySpec, trials: list[Trial], finished: Iterable[str] = (),
              missing: Optional[dict[str, str]] = None, lacking: Optional[dict[str, list[str]]] = None,
              from_weights: Iterable[str] = ()) -> PlanSummary:
    """Trials per table, finished so far, compute estimate; ``missing`` (trial id -> reason) is left out;
    ``lacking`` (:func:`views_lacking`): the trials in ``from_weights`` (their weights kept) are scored from
    them by the next run, the others are priced as training them again."""
    done = set(finished)
    lacking = lacking or {}
    kept = {tid: views for tid, views in lacking.items() if tid in set(from_weights)}
    lacking = {tid: views for tid, views in lacking.items() if tid not in kept}
    missing = missing or {}
    per_table: dict[str, dict[str, int]] = {}
    total = remaining = 0.0
    for trial in trials:
        for table in trial.tables:
            row = per_table.setdefault(table, {"trials": 0, "finished": 0, "unavailable": 0})
            row["trials"] += 1
            row["finished"] += trial.trial_id in done
            row["unavailable"] += trial.trial_id in missing
        if trial.trial_id in missing:
            continue
        seconds = example_epochs(trial) * seconds_per_example(spec, trial.model)
        total += seconds
        if trial.trial_id not in done:
            remaining += seconds
    retrain = sum(example_epochs(t) * seconds_per_example(spec, t.model) for t in trials if t.trial_id in lacking)
    views_note: dict[str, Any] = {}
    if lacking or kept:
        views_note = {"trials": len(lacking) + len(kept),
                      "views": sorted({v for vs in [*lacking.values(), *kept.values()] for v in vs}),
                      "from_weights": {"trials": len(kept), "views": sorted({v for vs in kept.values() for v in vs}),
                                       "trial_ids": sorted(kept)},
                      "retrain": {"trials": len(lacking), "views": sorted({v for vs in lacking.values() for v in vs}),
                                  "trial_ids": sorted(lacking)},
                      "retrain_hours": round(retrain / 3600, 3), "note": ""}
        notes = []
        if kept:
            notes.append(f"{len(kept)} kept their weights: `recon study run` scores the views on them (one "
                         "evaluation per trial, no training) and adds them to the trials' MLflow runs")
        if lacking:
            notes.append(f"{len(lacking)} keep no weights, so the views cannot be scored on the trained weights: "
                         "`recon study run` leaves them out (the name-reliance table says so), and having them means "
                         "training the trials again (their MLflow runs deleted, or the study under a new name)")
        views_note["note"] = "these trials finished before their grid asked for these views; " + "; ".join(notes)
    stages = {}
    for name, stage in spec.pretrain.items():
        seconds = estimate.pretrain_seconds(stage.steps, stage.batch_size, stage.max_length,
                                            estimate.encoder_kind(stage.encoder_name))
        stages[name] = {"objective": stage.objective, "steps": stage.steps, "hash": spec.stage_hash(name),
                        "estimated_hours": round(seconds / 3600, 3)}
        total += seconds
        remaining += seconds  # a finished stage is reused, but the plan does not look at disk
    return PlanSummary(
        study=spec.name, trials=len(trials), finished=sum(t.trial_id in done for t in trials), per_table=per_table,
        pretrain_stages=stages, estimated_hours_total=round(total / 3600, 3),
        estimated_hours_remaining=round(remaining / 3600, 3),
        note=(estimate.note(estimate.SECONDS_PER_EXAMPLE, estimate.SECONDS_PER_PAIR)
              + "; sequential, one device: divide by the number of concurrent trials; unavailable cells excluded."),
        unavailable=unavailable_cells(trials, missing), views_lacking=views_note,
    )


__all__ = ["expand", "summarize", "PlanSummary", "example_epochs", "seconds_per_example", "finetune_config",
           "fewshot_config", "unavailable_trials", "unavailable_cells", "views_lacking"]
