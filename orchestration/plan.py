"""Expand a study spec into trials, give each a stable id, and estimate the compute.

A trial's id is a hash of the canonical JSON of every field that changes its result (dataset,
split, split source, input format, seed, the model's definition, training settings, evaluation
caps), and of nothing else: not the model's display name, not the table it appears in, not file
locations. Hence

* re-running a study skips trials whose id is already finished in MLflow;
* a cell shared by two tables (TACRED 100% BERT C+M is in Tables 1 and 5) is trained once;
* two model entries with the same definition are rejected (they would be the same trial).

The compute estimate is deliberately simple and labelled as such: per-trial example-epochs
(training examples x epochs, plus evaluation passes at a third of the cost) times a per-example
cost for the model's encoder (seconds; override with ``seconds_per_example`` in the spec).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from .spec import ModelSpec, SpecError, StudySpec, stable_hash

# Paper Tables 8 and 9: (train, dev, test) and the sizes of the 1% / 10% training subsets.
DATASET_SIZES: dict[str, tuple[int, int, int]] = {
    "semeval": (6507, 1493, 2717),
    "chemprot": (4169, 2427, 3469),
    "wiki80": (39200, 5600, 11200),
    "tacred": (68124, 22631, 15509),
}
SUBSET_SIZES: dict[str, dict[float, int]] = {
    "semeval": {0.01: 73, 0.1: 660},
    "chemprot": {0.01: 49, 0.1: 423},
    "wiki80": {0.01: 400, 0.1: 3920},
    "tacred": {0.01: 703, 0.1: 6833},
}
FEWSHOT_EVAL_DATASETS = {"fewrel": "FewRel 1.0", "fewrel-pubmed": "FewRel 2.0 DA"}
PAPER_DATASET_NAMES = {"semeval": "SemEval", "chemprot": "ChemProt", "wiki80": "Wiki80", "tacred": "TACRED", **FEWSHOT_EVAL_DATASETS}
METRIC_OF = {"semeval": "micro_f1", "chemprot": "micro_f1", "tacred": "micro_f1", "wiki80": "accuracy",
             "fewrel": "accuracy", "fewrel-pubmed": "accuracy"}

# Seconds per training example (forward + backward); evaluation examples cost a third of that.
# Rough figures: bert-base at length 100 on one modern GPU; MiniLM-L6 on one CPU core; the CNN.
DEFAULT_SECONDS_PER_EXAMPLE = {"cnn": 0.0003, "minilm": 0.03, "encoder": 0.004}
EVAL_COST_FRACTION = 1 / 3


def split_label(split: float) -> str:
    return f"{split * 100:g}%"


def nk_label(nk: str) -> str:
    n, k = nk.split("-")
    return f"{n}-way {k}-shot"


@dataclass(frozen=True)
class Trial:
    """One Tune trial: a grid cell and seed (supervised) or an N-way K-shot setting (few-shot)."""

    trial_id: str
    kind: str              # "finetune" | "fewshot"
    tables: tuple[str, ...]
    dataset: str
    setting: str           # "1%" / "100%" or "5-way 1-shot"
    format: str
    model: str             # display name from the spec
    seed: int
    config: dict[str, Any] = field(compare=False, hash=False)

    @property
    def metric(self) -> str:
        return METRIC_OF[self.dataset]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tables"] = list(self.tables)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trial":
        return cls(**{**data, "tables": tuple(data["tables"])})


def _model_config(spec: StudySpec, model: ModelSpec) -> dict[str, Any]:
    if model.kind == "cnn":
        return {"kind": "cnn", "settings": spec.cnn.model_dump(mode="json")}
    out: dict[str, Any] = {"kind": "encoder", "encoder": spec.encoder_of(model)}
    if model.pretrain_ref:
        out["pretrain"] = {"stage": model.pretrain_ref, "hash": spec.stage_hash(model.pretrain_ref)}
    elif model.checkpoint:
        out["checkpoint"] = model.checkpoint
    return out


def _check_distinct_models(spec: StudySpec) -> None:
    seen: dict[str, str] = {}
    for model in spec.models:
        key = stable_hash(_model_config(spec, model))
        if key in seen:
            raise SpecError(f"models {seen[key]!r} and {model.name!r} have the same definition; they would be the same trials")
        seen[key] = model.name


def expand(spec: StudySpec) -> list[Trial]:
    """Every trial of the study, in a stable order, cells shared by several tables merged."""
    _check_distinct_models(spec)
    by_id: dict[str, Trial] = {}
    order: list[str] = []

    def add(trial_kw: dict[str, Any], table: str) -> None:
        config = trial_kw["config"]
        if spec.trainer:
            config["trainer"] = spec.trainer
        trial_id = stable_hash(config)
        if trial_id in by_id:
            old = by_id[trial_id]
            if table not in old.tables:
                by_id[trial_id] = Trial(**{**asdict(old), "tables": old.tables + (table,), "config": old.config})
            return
        by_id[trial_id] = Trial(trial_id=trial_id, tables=(table,), **trial_kw)
        order.append(trial_id)

    for grid in spec.grids:
        seeds = grid.seeds or spec.seeds
        for dataset in grid.datasets:
            for split in grid.splits:
                for model in spec.grid_models(grid.models):
                    training = spec.cnn if model.kind == "cnn" else spec.training
                    for fmt in grid.formats:
                        for seed in seeds:
                            config = {
                                "kind": "finetune", "dataset": dataset, "split": split,
                                "split_source": spec.split_source, "format": fmt, "seed": seed,
                                "model": _model_config(spec, model),
                                "training": training.model_dump(mode="json"),
                                "max_eval": spec.max_eval, "max_train": spec.max_train,
                            }
                            add({"kind": "finetune", "dataset": dataset, "setting": split_label(split), "format": fmt,
                                 "model": model.name, "seed": seed, "config": config}, grid.table)
    if spec.fewshot is not None:
        fs = spec.fewshot
        for dataset in fs.datasets:
            for nk in fs.nk:
                n, k = (int(x) for x in nk.split("-"))
                for model in spec.grid_models(fs.models):
                    if model.kind == "cnn":
                        raise SpecError(f"fewshot.models: {model.name!r} is a CNN; few-shot needs an encoder model")
                    for fmt in fs.formats:
                        config = {
                            "kind": "fewshot", "dataset": dataset, "n": n, "k": k, "format": fmt, "seed": fs.seed,
                            "model": _model_config(spec, model), "episodes": fs.episodes, "lr": fs.lr,
                            "batch_size": fs.batch_size, "train_episodes": fs.train_episodes, "q_query": fs.q_query,
                            "max_length": fs.max_length,
                        }
                        add({"kind": "fewshot", "dataset": dataset, "setting": nk_label(nk), "format": fmt,
                             "model": model.name, "seed": fs.seed, "config": config}, "table6")
    return [by_id[i] for i in order]


# ---------------------------------------------------------------- compute estimate

def train_size(dataset: str, split: float, max_train: Optional[int] = None) -> int:
    size = DATASET_SIZES[dataset][0] if split >= 1.0 else SUBSET_SIZES[dataset][split]
    return min(size, max_train) if max_train else size


def seconds_per_example(spec: StudySpec, model_name: str) -> float:
    if model_name in spec.seconds_per_example:
        return spec.seconds_per_example[model_name]
    model = spec.model(model_name)
    if model.kind == "cnn":
        return DEFAULT_SECONDS_PER_EXAMPLE["cnn"]
    encoder = (spec.encoder_of(model) or "").lower()
    return DEFAULT_SECONDS_PER_EXAMPLE["minilm" if "minilm" in encoder else "encoder"]


def example_epochs(trial: Trial) -> float:
    """Training examples x epochs + evaluation examples (weighted by ``EVAL_COST_FRACTION``)."""
    c = trial.config
    if trial.kind == "finetune":
        epochs = c["training"]["epochs"]
        _, dev, test = DATASET_SIZES[trial.dataset]
        if c["max_eval"]:
            dev, test = min(dev, c["max_eval"]), min(test, c["max_eval"])
        trained = train_size(trial.dataset, c["split"], c["max_train"]) * epochs
        if c["training"].get("max_train_steps"):
            trained = min(trained, c["training"]["max_train_steps"] * c["training"]["batch_size"])
        return trained + (dev + test) * epochs * EVAL_COST_FRACTION
    # Few-shot: training and evaluation episodes of N*K support + N*Q query sentences.
    per_episode = c["n"] * (c["k"] + c["q_query"])
    return c["train_episodes"] * per_episode + c["episodes"] * per_episode * EVAL_COST_FRACTION


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(spec: StudySpec, trials: list[Trial], finished: Iterable[str] = ()) -> PlanSummary:
    done = set(finished)
    per_table: dict[str, dict[str, int]] = {}
    total = remaining = 0.0
    for trial in trials:
        seconds = example_epochs(trial) * seconds_per_example(spec, trial.model)
        total += seconds
        if trial.trial_id not in done:
            remaining += seconds
        for table in trial.tables:
            row = per_table.setdefault(table, {"trials": 0, "finished": 0})
            row["trials"] += 1
            row["finished"] += trial.trial_id in done
    stages = {}
    for name, stage in spec.pretrain.items():
        cost = DEFAULT_SECONDS_PER_EXAMPLE["minilm" if "minilm" in (stage.encoder or spec.encoder).lower() else "encoder"]
        seconds = stage.steps * stage.batch_size * 2 * cost * stage.max_length / 100
        stages[name] = {"objective": stage.objective, "steps": stage.steps, "hash": spec.stage_hash(name),
                        "estimated_hours": round(seconds / 3600, 3)}
        total += seconds
        remaining += seconds  # a finished stage is reused, but the plan does not look at disk
    return PlanSummary(
        study=spec.name, trials=len(trials), finished=sum(t.trial_id in done for t in trials), per_table=per_table,
        pretrain_stages=stages, estimated_hours_total=round(total / 3600, 3),
        estimated_hours_remaining=round(remaining / 3600, 3),
        note=("ESTIMATE: example-epochs x seconds per example "
              f"(defaults {DEFAULT_SECONDS_PER_EXAMPLE}, eval at {EVAL_COST_FRACTION:.2f} of a training example); "
              "sequential, one device: divide by the number of concurrent trials."),
    )


__all__ = ["Trial", "expand", "summarize", "PlanSummary", "split_label", "nk_label", "example_epochs",
           "train_size", "DATASET_SIZES", "PAPER_DATASET_NAMES", "METRIC_OF"]
