"""The sweep spec: Optuna over pre-training settings (P_BLANK, batch size ...) scored downstream.

    sweep = load_sweep("studies/sweep-demo.yaml")      # file/line/field errors, like a study
    sweep.trials_budget(), sweep.probe_steps()          # what `recon sweep plan` prints
    pre, probe = sweep.resolve({"pretrain.p_blank": 0.3, "pretrain.batch_size": 16})
    sweep.trial_id(params)                              # hash of the resolved configs' identity

A sweep is a YAML file (``studies/sweep-*.yaml``) and, like a study, a small diff over the
component configs' defaults::

    name: sweep-demo
    encoder: minilm
    pretrain: {objective: cp, corpus: "@demo", batch_size: 16, lr: 5.0e-5}   # PretrainConfig: every trial's base
    finetune:                                       # FinetuneConfig: the downstream probe
      dataset: semeval
      split: 0.1
      data: {split_source: paper, max_eval: 100, max_length: 48}
      training: {lr: 3.0e-4, batch_size: 16, epochs: 1, max_train_steps: 24}
    space:                                          # config field BY PATH -> domain
      pretrain.p_blank: uniform(0, 1)
      pretrain.batch_size: choice([8, 16, 32])
    sampler: {type: tpe, seed: 7}                   # tpe | random | grid (every domain a choice)
    budget: {trials: 6, steps: 12, concurrency: 1, probes: 3}
    objective: {score_on: dev, seeds: [42]}         # median over seeds of the probe's dev score
    early_stopping: {type: asha, grace_period: 1, reduction_factor: 2}
    ray: {num_cpus: 2, cpus_per_trial: 1}           # RayConfig

Paths are ``pretrain.<field>`` (:class:`~recon.models.pretrain.config.PretrainConfig`) and
``finetune.<field>[.<field>]`` (:class:`~recon.models.train.finetune_config.FinetuneConfig`, e.g.
``finetune.training.lr``); they must name a leaf field that changes results (``identity=True``).
Every candidate value (each choice, both bounds of a range) is checked by the config class's own
constraints when the file is loaded, so ``pretrain.p_blank: uniform(0, 1.5)`` is an error at its
line. Domains: ``uniform(a, b)``, ``loguniform(a, b)``, ``randint(a, b)`` (inclusive) and
``choice([...])``.

A trial = the base configs + the sampled values; its id hashes the resolved configs' identity
(and the corpus content, the probe schedule and seeds), so a configuration that already finished
is never trained again. The objective is reported at ``budget.probes`` pre-training checkpoints
(every ``ceil(steps / probes)`` steps and the last): those intermediate scores are what the early
stopping rule (ASHA or median stopping) compares.
"""
from __future__ import annotations

import copy
import itertools
import math
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from recon.core.config import IDENTITY, ConfigError, field_type
from recon.core.defaults import DEFAULT_ENCODER, DEFAULT_SEED
from recon.core.errors import ReconError
from recon.core.hashing import stable_hash
from recon.core.protocol import DEFAULT_PROTOCOL, PROTOCOL_NAMES
from recon.models.train.finetune_config import FinetuneConfig
from recon.models.pretrain.config import DEMO_CORPUS, PretrainConfig

from recon.core.ray_session import RayConfig
from recon.core.spec_fields import SeedList
from recon.core.yaml_layers import SpecError, locate, merged_layers, validation_problems, with_protocol
from recon.orchestration.study.spec import corpus_content_identity
from recon.orchestration.sweep.space import SECTIONS, Domain, field_of
from recon.orchestration.tracking.uri import DEFAULT_DB_NAME, chosen_tracking_uri, sqlite_uri

# Set by the sweep itself for every probe: searching them would make no sense.
RESERVED = {"finetune.model": "the probe fine-tunes the trial's pre-trained checkpoint",
            "finetune.encoder": "the probe fine-tunes the trial's pre-trained checkpoint",
            "finetune.path": "give the probe's data as finetune.dataset",
            "finetune.kind": "give the probe's data as finetune.dataset",
            "finetune.source_identity": "set from the trial id",
            "finetune.training.seed": "the probe seeds are objective.seeds",
            "pretrain.steps": "the pre-training steps per trial are budget.steps"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplerSpec(_Strict):
    """Optuna's sampler: ``tpe`` (seeded), ``random``, or ``grid`` (every point of the choice domains)."""

    type: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = 0
    n_startup_trials: int = Field(3, ge=1)  # TPE: random trials before the model kicks in


class BudgetSpec(_Strict):
    """How much the sweep may spend: trials, pre-training steps per trial, trials at once, probes per trial."""

    trials: Optional[int] = Field(None, ge=1)  # default: the grid's size (required for tpe / random)
    steps: int = Field(ge=1)                   # pre-training steps of every trial
    concurrency: int = Field(1, ge=1)
    probes: int = Field(3, ge=1)               # checkpoints scored downstream (the last one is the objective)


class ObjectiveSpec(_Strict):
    """What a trial is scored by: the probe's ``score_on`` score (the dataset's metric), median over ``seeds``.

    ``expected_score`` changes no result: it is the score the plan assumes when it estimates the smallest
    difference the sweep can detect (``power``; 0.5, the worst case, when unset)."""

    score_on: Literal["dev", "test"] = "dev"
    metric: str = "score"       # key of the run's dev/test dict; ``score`` is the dataset's paper metric
    seeds: SeedList = Field(default_factory=lambda: [DEFAULT_SEED], min_length=1)
    mode: Literal["max", "min"] = "max"
    expected_score: Optional[float] = Field(None, gt=0, lt=1)


NOT_IDENTITY = {"mode", "expected_score"}  # objective fields that change no trial's result (not in its id)


class EarlyStoppingSpec(_Strict):
    """Stop hopeless trials on their intermediate probe scores: ASHA, median stopping, or none."""

    type: Literal["asha", "median", "none"] = "asha"
    grace_period: int = Field(1, ge=1)           # probes a trial always gets
    reduction_factor: float = Field(2.0, gt=1)   # ASHA
    min_samples_required: int = Field(2, ge=1)   # median stopping: trials to compare with


class SweepSpec(_Strict):
    """A whole sweep: base configs, search space, sampler, budget, objective, early stopping and Ray settings."""

    name: str = Field(pattern=r"^[\w.-]+$")
    description: str = ""
    encoder: str = DEFAULT_ENCODER  # the pre-training's starting encoder unless pretrain.encoder names one
    protocol: Literal[PROTOCOL_NAMES] = DEFAULT_PROTOCOL  # type: ignore[valid-type]  # sets pretrain/finetune points
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    space: dict[str, Any] = Field(min_length=1)
    sampler: SamplerSpec = SamplerSpec()
    budget: BudgetSpec
    objective: ObjectiveSpec = ObjectiveSpec()
    early_stopping: EarlyStoppingSpec = EarlyStoppingSpec()
    ray: RayConfig = RayConfig()
    tracking_uri: Optional[str] = None   # default: $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db
    output_dir: Optional[str] = None     # default: runs/<name>
    storage: Optional[str] = None        # default: $RECON_STORAGE, else output_dir
    seconds_per_pair: Optional[float] = Field(None, gt=0)     # plan: pre-training cost per positive pair
    seconds_per_example: Optional[float] = Field(None, gt=0)  # plan: probe cost per training example
    _source: Optional[Path] = PrivateAttr(default=None)
    _raw: dict = PrivateAttr(default_factory=dict)          # the file's pretrain / finetune sections, unresolved
    _domains: dict = PrivateAttr(default_factory=dict)
    _merged: dict = PrivateAttr(default_factory=dict)       # the merged file content (shipped to trials)

    def payload(self) -> dict:
        """What a trial needs to rebuild this spec on any node: the merged file content."""
        return {"merged": copy.deepcopy(self._merged), "source": str(self._source) if self._source else None}

    # ------------------------------------------------------------ paths
    @property
    def source(self) -> Optional[Path]:
        return self._source

    def data_root(self) -> Optional[str]:
        """The probe's data directory as the driver resolves it (``stages.data_root``)."""
        from recon.orchestration.study.stages import data_root

        data_dir = self.finetune.data.data_dir
        return data_root(self.resolve_path(data_dir) if data_dir else None)

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        if not path.is_absolute() and self._source is not None:
            path = self._source.parent / path
        return path.resolve()

    def evaluated_datasets(self) -> list[str]:
        return [self.finetune.dataset] if self.finetune.dataset else []

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name).resolve()

    def resolved_tracking_uri(self) -> str:
        """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the sweep's SQLite store in its output folder."""
        return chosen_tracking_uri(self.tracking_uri, sqlite_uri(self.resolved_output_dir() / DEFAULT_DB_NAME))

    # ------------------------------------------------------------ the space
    @property
    def domains(self) -> dict[str, Domain]:
        return dict(self._domains)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of the grid (choice domains only), in file order."""
        names = list(self._domains)
        values = [self._domains[n].choices for n in names]
        return [dict(zip(names, combo)) for combo in itertools.product(*values)]

    def trials_budget(self) -> int:
        if self.budget.trials is not None:
            return self.budget.trials
        return len(self.grid_points())

    def checkpoint_every(self) -> int:
        return max(1, math.ceil(self.budget.steps / self.budget.probes))

    def probe_steps(self) -> list[int]:
        """The pre-training steps whose checkpoints are scored: multiples of ``checkpoint_every`` and the last."""
        every, steps = self.checkpoint_every(), self.budget.steps
        return sorted({s for s in range(every, steps, every)} | {steps})

    # ------------------------------------------------------------ one trial
    def resolve(self, params: dict[str, Any]) -> tuple[PretrainConfig, FinetuneConfig]:
        """The trial's pre-training and probe configs: the file's sections + ``params``, validated by the classes."""
        raw = {name: copy.deepcopy(self._raw.get(name) or {}) for name in SECTIONS}
        for path, value in params.items():
            section, *rest = path.split(".")
            _set_path(raw[section], rest, value)
        pre = dict(raw["pretrain"])
        pre.setdefault("encoder", self.encoder)
        pre["steps"] = self.budget.steps
        pretrain = PretrainConfig.from_dict(pre, "pretrain.")
        pretrain.checkpoint_every = self.checkpoint_every()
        pretrain.keep_checkpoints = max(pretrain.keep_checkpoints, len(self.probe_steps()) + 1)
        probe = FinetuneConfig.from_dict(raw["finetune"], "finetune.")
        return pretrain, probe

    def corpus_identity(self) -> Any:
        """What the corpus contributes to a trial id (the demo corpus by what it excludes, a built one by content)."""
        if self.pretrain.corpus == DEMO_CORPUS:
            return {"demo_excludes": self.evaluated_datasets()}
        return corpus_content_identity(self.resolve_path(self.pretrain.corpus))

    def trial_id(self, params: dict[str, Any], corpus_identity: Any = None) -> str:
        """Hash of the resolved configs' identity, the corpus, the probe schedule and the objective."""
        pretrain, probe = self.resolve(params)
        payload = {"pretrain": pretrain.identity(), "probe": probe.identity(), "probe_steps": self.probe_steps(),
                   "objective": self.objective.model_dump(exclude=NOT_IDENTITY),
                   "corpus": self.corpus_identity() if corpus_identity is None else corpus_identity}
        return stable_hash(payload)


def _set_path(target: dict, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        node = target.get(part)
        if not isinstance(node, dict):
            node = target[part] = {}
        target = node
    target[parts[-1]] = value


def _check_space(spec: SweepSpec, raw: dict, layers) -> dict[str, Domain]:
    """Parse every domain and check every candidate value with the config classes; SpecError at its line."""
    domains: dict[str, Domain] = {}
    problems = []

    def problem(path: str, message: str, loc: tuple | None = None) -> None:
        where_file, line = locate(loc or ("space", path), layers)
        at = f"{where_file}, line {line}" if line else f"{where_file}"
        problems.append(f"{at}, field 'space.{path}': {message}")

    for path, value in spec.space.items():
        if path in RESERVED:
            problem(path, f"not searchable: {RESERVED[path]}")
            continue
        try:
            cls, f = field_of(path)
            domain = Domain.parse(value)
        except ValueError as exc:
            problem(path, str(exc))
            continue
        if not f.metadata.get(IDENTITY, True):
            problem(path, "does not change results (where/how a run goes, not what it learns): nothing to search")
            continue

        base, _ = field_type(typing.get_type_hints(cls)[f.name])
        if base is int and domain.kind in ("uniform", "loguniform"):
            problem(path, f"{f.name} is an integer: use randint(a, b) or choice([...])")
            continue
        for candidate in domain.candidates():
            try:
                spec.resolve({path: candidate})
            except ConfigError as exc:
                detail = exc.detail if exc.field == path else f"{exc.field}: {exc.detail}"
                problem(path, f"value {candidate!r} is invalid: {detail}")
                break
        domains[path] = domain
    if spec.sampler.type == "grid":
        ranges = [p for p, d in domains.items() if d.kind != "choice"]
        if ranges:
            problem(ranges[0], "a grid sampler needs choice([...]) domains")
        elif spec.budget.trials is not None and spec.budget.trials > math.prod(len(d.choices) for d in domains.values()):
            where_file, line = locate(("budget", "trials"), layers)
            problems.append(f"{where_file}{f', line {line}' if line else ''}, field 'budget.trials': the grid has "
                            f"{math.prod(len(d.choices) for d in domains.values())} points; leave trials out or "
                            "give at most that many")
    elif spec.budget.trials is None and not problems:
        where_file, line = locate(("budget",), layers)
        problems.append(f"{where_file}{f', line {line}' if line else ''}, field 'budget.trials': required for a "
                        f"{spec.sampler.type} sampler (only a grid has a natural size)")
    if problems:
        raise SpecError("invalid sweep spec: " + "; ".join(problems))
    return domains


def load_sweep(path: str | Path) -> SweepSpec:
    """Read, merge (``defaults:``) and validate a sweep file; SpecError names file, field and line."""
    path = Path(path).resolve()
    merged, layers = merged_layers(path)
    return _build(merged, layers, path)


def sweep_from_payload(payload: dict) -> SweepSpec:
    """The spec a trial gets (``SweepSpec.payload()``): the merged file content, validated again."""
    source = Path(payload["source"]) if payload.get("source") else Path("sweep.yaml")
    return _build(copy.deepcopy(payload["merged"]), [(source, payload["merged"], {})], source)


def _build(merged: dict, layers, path: Path) -> SweepSpec:
    merged = with_protocol(merged, SECTIONS)
    try:
        spec = SweepSpec.model_validate(merged)
    except ValidationError as exc:
        problems = validation_problems(exc, layers, "sweep", SweepSpec)
        raise SpecError("invalid sweep spec: " + "; ".join(problems)) from None
    spec._source = path
    spec._merged = copy.deepcopy(merged)
    spec._raw = {name: copy.deepcopy(merged.get(name) or {}) for name in SECTIONS}
    for reserved in ("steps",):
        if reserved in spec._raw["pretrain"]:
            where_file, line = locate(("pretrain", reserved), layers)
            raise SpecError(f"invalid sweep spec: {where_file}, line {line}, field 'pretrain.{reserved}': "
                            "set the pre-training steps per trial as budget.steps")
    for key in ("model", "encoder", "path", "kind", "source_identity"):
        if key in spec._raw["finetune"]:
            where_file, line = locate(("finetune", key), layers)
            raise SpecError(f"invalid sweep spec: {where_file}, line {line}, field 'finetune.{key}': "
                            f"{RESERVED['finetune.' + key]}")
    if "seed" in (spec._raw["finetune"].get("training") or {}):
        where_file, line = locate(("finetune", "training", "seed"), layers)
        raise SpecError(f"invalid sweep spec: {where_file}, line {line}, field 'finetune.training.seed': "
                        "the probe seeds are objective.seeds")
    spec._domains = _check_space(spec, merged, layers)
    return spec


# ---------------------------------------------------------------- plan

def plan(spec: SweepSpec) -> dict[str, Any]:
    """Trials, pre-training and probe work per trial, and an estimate of the compute (labelled as such)."""
    from dataclasses import asdict

    from recon.orchestration.study import estimate

    trials = spec.trials_budget()
    pretrain, probe = spec.resolve({})
    kind = estimate.encoder_kind(pretrain.encoder_name)
    per_example = spec.seconds_per_example or estimate.SECONDS_PER_EXAMPLE[kind]
    # batch sizes vary across trials: take the space's mean where it is searched
    batch = spec._domains.get("pretrain.batch_size")
    mean_batch = (sum(batch.candidates()) / len(batch.candidates()) if batch is not None else pretrain.batch_size)
    pretrain_s = estimate.pretrain_seconds(spec.budget.steps, mean_batch, pretrain.max_length, kind,
                                           spec.seconds_per_pair)
    per_pair = pretrain_s / max(spec.budget.steps * mean_batch, 1)
    probe_s = estimate.finetune_example_epochs(probe.dataset, probe.split, asdict(probe.data),
                                               asdict(probe.training)) * per_example
    probes = len(spec.probe_steps()) * len(spec.objective.seeds)
    per_trial = pretrain_s + probes * probe_s
    waves = math.ceil(trials / spec.budget.concurrency)
    from recon.orchestration.sweep.power import detectable_difference

    scored = scored_examples(probe.dataset, spec.objective.score_on, probe.data.max_eval)
    detectable = detectable_difference(scored, len(spec.objective.seeds), spec.objective.expected_score)
    return {
        "sweep": spec.name, "sampler": spec.sampler.type, "trials": trials,
        "space": {p: d.describe() for p, d in spec._domains.items()},
        "grid": spec.grid_points() if spec.sampler.type == "grid" else None,
        "pretrain_steps": spec.budget.steps, "probe_steps": spec.probe_steps(), "seeds": spec.objective.seeds,
        "probe": {"dataset": probe.dataset, "split": probe.split, "format": probe.input_format,
                  "score_on": spec.objective.score_on, "scored_examples": scored},
        "detectable": detectable,
        "concurrency": spec.budget.concurrency, "early_stopping": spec.early_stopping.type,
        "estimated_seconds_per_trial": {"pretrain": round(pretrain_s, 1), "probes": round(probes * probe_s, 1)},
        "estimated_hours_total": round(per_trial * trials / 3600, 3),
        "estimated_hours_wall": round(per_trial * waves / 3600, 3),
        "note": (f"ESTIMATE without early stopping: steps x pairs x {per_pair:.4f} s/pair + probes x seeds x "
                 f"example-epochs x {per_example:.4f} s/example (override with seconds_per_pair / "
                 "seconds_per_example); wall = trials / concurrency in waves"),
    }


def scored_examples(dataset: Optional[str], split: str, max_eval: Optional[int]) -> Optional[int]:
    """How many examples a probe is scored on: the registry's size of ``split`` (``dev`` or ``test``; the
    paper's Table 8), capped by ``max_eval``; None for a dataset the registry does not know."""
    from recon.data_prep.registry import paper_split_sizes

    try:
        _, dev, test = paper_split_sizes(dataset) if dataset else (None, None, None)
    except (KeyError, ValueError, ReconError):
        dev = test = None
    size = dev if split == "dev" else test
    if size is None:
        return None
    return min(size, max_eval) if max_eval else size


def best_snippet(spec: SweepSpec, params: dict[str, Any], stage: Optional[str] = None) -> str:
    """The best trial's pre-training config as a study snippet (``pretrain: {<stage>: {...}}``).

    Only what differs from PretrainConfig's defaults is written, plus every searched field, so
    the snippet reads as the small diff a study is.
    """
    pretrain, _ = spec.resolve(params)
    defaults = PretrainConfig(objective=pretrain.objective)
    searched = {p.split(".", 1)[1] for p in params if p.startswith("pretrain.")}
    body = {}
    for key, value in pretrain.to_dict().items():
        if key in ("checkpoint_every", "keep_checkpoints") or (key == "micro_batch_size" and
                                                                key not in spec._raw["pretrain"]):
            continue  # the sweep's probe schedule, and a value derived from batch size and workers
        if key in searched or key in ("objective", "steps", "batch_size", "corpus") or value != getattr(defaults, key):
            body[key] = value
    text = yaml.safe_dump({"pretrain": {stage or f"{spec.name}-best": body}}, sort_keys=False,
                          default_flow_style=False)
    return text


def show_value(value: Any) -> str:
    """A sampled value as tables, plots and console lines show it (floats to 3 significant digits)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


__all__ = ["show_value", "SweepSpec", "Domain", "load_sweep", "sweep_from_payload", "field_of", "plan", "best_snippet", "SpecError", "ReconError"]
