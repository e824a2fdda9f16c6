"""The study spec: ONE typed schema (pydantic v2) that every ``recon study`` command reads.

A study is a YAML file; it is a small diff over the defaults of the component configs it is
composed of (``data``/``training``/``cnn``: ``recon.models.train.finetune``; ``pretrain.<stage>``:
``recon.models.pretrain.config``; ``fewshot.settings``: ``recon.models.train.fewshot``; ``ray``:
``recon.core.ray_session``). Those classes are the only place defaults live; the command
line is generated from the same fields. A study may also start from another
study file with ``defaults: other.yaml`` (path relative to the study file; a list is merged left to
right): mappings merge key by key, lists and scalars are replaced.

Shape (see ``studies/paper.yaml`` and ``studies/demo.yaml``)::

    name: demo
    encoder: minilm
    models:                       # definitions; ``name`` is the label used in tables
      - {name: MiniLM, compare_to: BERT}
      - {name: MiniLM+CP, checkpoint: "@pretrain.cp", compare_to: CP}
    pretrain:                     # stages run before the grid; models reference "@pretrain.<name>"
      cp: {objective: cp, steps: 30, batch_size: 16, num_workers: 2}   # PretrainConfig fields
    grids:                        # one grid per paper table; cells = datasets x splits x formats x models
      - {table: table5, datasets: [semeval], splits: [0.01, 0.1], formats: [C+M, OnlyC, OnlyM]}
      - {table: table5, datasets: [semeval], splits: [0.1], formats: [C+M],          # the same trials (same ids),
         eval_views: [swap-type, swap-unseen, swap-random, onlyc]}                    # also scored on test views
                                  # (their weights kept, so a view added later needs no training: keep_weights)
    seeds: [42, 43, 44, 45, 46]
    data: {split_source: paper, max_eval: 100, max_length: 48}          # DataOptions fields
    training: {epochs: 2, lr: 3.0e-4}                                   # TrainConfig fields
    fewshot: {datasets: [fewrel], nk: ["5-1"], models: [MiniLM], settings: {eval_episodes: 100}}
    ray: {cpus_per_trial: 1, max_concurrent_trials: 2}                  # RayConfig fields

Validation errors name the file, the field path and (when the key is in a file) its line.
"""
from __future__ import annotations

import difflib

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from recon.core.config import ConfigError
from recon.core.defaults import DEFAULT_ENCODER, DEFAULT_SEED, PAPER_SEEDS
from recon.core.errors import ReconError
from recon.core.hashing import stable_hash
from recon.core.protocol import DEFAULT_PROTOCOL, PROTOCOL_NAMES
from recon.core.spec_fields import SeedList
from recon.core.yaml_layers import SpecError, merged_layers, validation_problems, with_protocol
from recon.data_prep.formats import FORMAT_NAMES, InputFormat
from recon.data_prep.name_swap import check_kinds
from recon.data_prep.registry import fewshot_datasets, supervised_datasets
from recon.models.train.fewshot import FewshotSettings
from recon.models.train.finetune_config import CHECKPOINT_PREFIX, CnnTraining, DataOptions
from recon.models.nets.heads import HeadOptions
from recon.models.pretrain.config import DEMO_CORPUS, PretrainConfig
from recon.models.train.config import TrainConfig

from recon.core.ray_session import RayConfig
from recon.orchestration.tracking.uri import DEFAULT_DB_NAME, chosen_tracking_uri, sqlite_uri

FORMATS = FORMAT_NAMES  # the input formats, in the paper's order (from InputFormat)
PAPER_MODEL_LABELS = ("CNN", "BERT", "MTB", "CP")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _format_name(value: str) -> str:
    try:
        return InputFormat.parse(str(value)).value
    except ReconError as exc:
        raise ValueError(str(exc)) from None


def _dataset_names(kind: str):
    names = supervised_datasets() if kind == "supervised" else fewshot_datasets()

    def check(value: list[str]) -> list[str]:
        for name in value:
            if name not in names:
                raise ValueError(f"unknown {kind} dataset {name!r}; known: {', '.join(names)}")
        return value
    return check


class ModelSpec(_Strict):
    """One model column of the tables.

    ``kind: encoder`` fine-tunes ``encoder`` (a Hugging Face path/name or an installed package
    holding a ``model`` folder), optionally starting from ``checkpoint`` (a recon checkpoint
    directory, or ``@pretrain.<stage>`` for a pre-training stage of this study).
    ``compare_to`` is the paper's label whose reported numbers the delta table uses.
    """

    name: str = Field(min_length=1)
    kind: Literal["encoder", "cnn"] = "encoder"
    encoder: Optional[str] = None
    checkpoint: Optional[str] = None
    compare_to: Optional[Literal["CNN", "BERT", "MTB", "CP"]] = None

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if self.kind == "cnn" and (self.encoder or self.checkpoint):
            raise ValueError("a cnn model takes neither 'encoder' nor 'checkpoint'")
        if self.checkpoint and self.checkpoint.startswith("@") and not re.fullmatch(r"@pretrain\.[\w-]+", self.checkpoint):
            raise ValueError("checkpoint references look like '@pretrain.<stage name>'")
        return self

    @property
    def paper_label(self) -> Optional[str]:
        if self.compare_to:
            return self.compare_to
        return self.name if self.name in PAPER_MODEL_LABELS else None

    @property
    def pretrain_ref(self) -> Optional[str]:
        if self.checkpoint and self.checkpoint.startswith(CHECKPOINT_PREFIX):
            return self.checkpoint[len(CHECKPOINT_PREFIX):]
        return None


class GridSpec(_Strict):
    """One table's grid: every dataset x split x format x model x seed is a trial."""

    table: str = Field("main", pattern=r"^[\w-]+$")
    datasets: list[str] = Field(min_length=1)
    splits: list[float] = Field(default_factory=lambda: [1.0], min_length=1)  # any fraction in (0, 1]
    formats: list[str] = Field(default_factory=lambda: ["C+M"], min_length=1)
    models: Optional[list[str]] = None  # names from the study's ``models``; default: all of them
    seeds: Optional[SeedList] = None   # default: the study's ``seeds``
    # Test views scored on each trained trial's weights after training (recon.models.train.views): evaluations
    # of the same weights, so they are not part of the trial id; every name is checked here, before compute.
    eval_views: list[str] = Field(default_factory=list)
    # Keep each trial's trained weights in storage (weights.safetensors, ~90 MB per MiniLM trial), so a view
    # added to the grid later is scored on them without training again (recon.orchestration.study.kept).
    # Default: the study's keep_weights, else kept exactly where the grid asks for views. Outside the trial id.
    keep_weights: Optional[bool] = None

    _datasets = field_validator("datasets")(classmethod(lambda cls, v: _dataset_names("supervised")(v)))

    @field_validator("eval_views")
    @classmethod
    def _views(cls, value: list[str]) -> list[str]:
        try:
            return list(dict.fromkeys(check_kinds(str(v) for v in value)))
        except ReconError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _views_need_names(self) -> "GridSpec":
        from recon.data_prep.name_swap import views_format_problem

        for fmt in self.formats if self.eval_views else ():
            problem = views_format_problem(fmt)
            if problem:
                raise ValueError(f"eval_views on a grid with format {fmt}: {problem}; give the views to a grid of "
                                 "those formats only (the other formats in a grid of their own)")
        return self

    @field_validator("splits")
    @classmethod
    def _splits(cls, value: list[float]) -> list[float]:
        for split in value:
            if not 0 < split <= 1:
                raise ValueError(f"split {split!r} is not a training fraction in (0, 1]")
        return value

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        return [_format_name(v) for v in value]


class FewshotGrid(_Strict):
    """FewRel N-way K-shot evaluation (paper Table 6): one trial per dataset x N-K x format x model."""

    datasets: list[str] = Field(default_factory=lambda: list(fewshot_datasets()), min_length=1)
    nk: list[str] = Field(default_factory=lambda: ["5-1", "5-5", "10-1", "10-5"], min_length=1)
    formats: list[str] = Field(default_factory=lambda: ["C+M", "OnlyC", "OnlyM"], min_length=1)
    models: Optional[list[str]] = None
    settings: FewshotSettings = FewshotSettings()

    _datasets = field_validator("datasets")(classmethod(lambda cls, v: _dataset_names("fewshot")(v)))

    @field_validator("nk")
    @classmethod
    def _nk(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"\d+-\d+", str(item)):
                raise ValueError(f"N-way K-shot {item!r} must look like '5-1'")
        return [str(v) for v in value]

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        return [_format_name(v) for v in value]


class StudySpec(_Strict):
    """A whole study, composed of the component configs: a YAML file is a small diff over their defaults."""

    name: str = Field(pattern=r"^[\w.-]+$")
    description: str = ""
    encoder: str = DEFAULT_ENCODER  # default encoder of every encoder model (and pre-training stage)
    models: list[ModelSpec] = Field(min_length=1)
    pretrain: dict[str, PretrainConfig] = Field(default_factory=dict)
    grids: list[GridSpec] = Field(default_factory=list)
    seeds: SeedList = Field(default_factory=lambda: list(PAPER_SEEDS), min_length=1)
    # A named protocol sets every protocol point field below (data, head, training, fewshot.settings,
    # pretrain stages) unless the file sets it: recon.core.protocol.
    protocol: Literal[PROTOCOL_NAMES] = DEFAULT_PROTOCOL  # type: ignore[valid-type]
    data: DataOptions = DataOptions()
    head: HeadOptions = HeadOptions()
    training: TrainConfig = TrainConfig()
    cnn: CnnTraining = CnnTraining()
    fewshot: Optional[FewshotGrid] = None
    ray: RayConfig = RayConfig()
    tracking_uri: Optional[str] = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db
    output_dir: Optional[str] = None    # default: runs/<name> under the current directory
    # Where every node reads and writes (checkpoints, trial outputs, published datasets): a path (local
    # or NFS, relative to the study file) or a URI (s3://...). Default: $RECON_STORAGE, else output_dir.
    storage: Optional[str] = None
    # Every grid's keep_weights unless the grid sets its own; unset: a grid keeps weights when it asks for views.
    keep_weights: Optional[bool] = None
    trainer: Optional[str] = None  # "module:function" or "file.py:function" replacing run_finetune (tests, custom models)
    seconds_per_example: dict[str, float] = Field(default_factory=dict)  # compute-estimate overrides per model name
    _source: Optional[Path] = PrivateAttr(default=None)  # the study file, set by load_spec

    @property
    def source(self) -> Optional[Path]:
        return self._source

    def resolve_path(self, value: str) -> Path:
        """A path from the spec, relative to the study file's folder (or the current one)."""
        path = Path(value).expanduser()
        if not path.is_absolute() and self._source is not None:
            path = self._source.parent / path
        return path.resolve()

    @model_validator(mode="after")
    def _references(self) -> "StudySpec":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        for model in self.models:
            ref = model.pretrain_ref
            if ref is not None and ref not in self.pretrain:
                raise ValueError(f"model {model.name!r} references {model.checkpoint!r} but 'pretrain' has no stage {ref!r}")
        groups = [(f"grids.{i}.models", g.models) for i, g in enumerate(self.grids)]
        if self.fewshot is not None:
            groups.append(("fewshot.models", self.fewshot.models))
        for where, chosen in groups:
            for i, name in enumerate(chosen or []):
                if name not in names:
                    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
                    hint = f"; did you mean '{close[0]}'?" if close else ""
                    raise ConfigError(f"{where}.{i}", f"unknown model {name!r}; the study's models are "
                                                      f"{', '.join(names)}{hint}")
        if not self.grids and self.fewshot is None:
            raise ValueError("a study needs at least one grid or a 'fewshot' section")
        if self.training.seed != DEFAULT_SEED:
            raise ValueError("training.seed is set per trial from 'seeds' (or a grid's 'seeds'); remove it")
        for stage in self.pretrain.values():
            if stage.encoder is None:  # stages start from the study's encoder unless they name their own
                stage.encoder = self.encoder
        return self

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def grid_models(self, chosen: Optional[list[str]]) -> list[ModelSpec]:
        return [self.model(n) for n in chosen] if chosen else list(self.models)

    def keeps_weights(self, grid: GridSpec) -> bool:
        """Whether a grid's trials keep their trained weights: the grid's ``keep_weights``, else the study's,
        else whether the grid asks for test views (a grid studied for name reliance is where another view is
        likely to be added; grids without views do not pay ~90 MB per MiniLM trial for a view never asked)."""
        for choice in (grid.keep_weights, self.keep_weights):
            if choice is not None:
                return choice
        return bool(grid.eval_views)

    def encoder_of(self, model: ModelSpec) -> Optional[str]:
        if model.kind == "cnn":
            return None
        if model.pretrain_ref:
            return model.encoder or self.pretrain[model.pretrain_ref].encoder_name
        return model.encoder or self.encoder

    def evaluated_datasets(self) -> list[str]:
        """Every dataset the study evaluates on (grids and few-shot), sorted."""
        fewshot = self.fewshot.datasets if self.fewshot else ()
        return sorted({d for grid in self.grids for d in grid.datasets} | set(fewshot))

    def stage_hash(self, stage_name: str) -> str:
        """Stable hash of a pre-training stage: its resolved config and the corpus it trains on.

        The built-in ``@demo`` corpus leaves out the entity pairs of the evaluated datasets, so
        those are part of what the stage trains on and of its hash; a corpus directory counts by
        its content identity (from its manifest), never by its path.
        """
        stage = self.pretrain[stage_name]
        payload = stage.identity()
        if stage.corpus == DEMO_CORPUS:
            payload["corpus"] = {"demo_excludes": self.evaluated_datasets()}
        else:
            payload["corpus"] = corpus_content_identity(self.resolve_path(stage.corpus))
        return stable_hash(payload)

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name).resolve()

    def resolved_tracking_uri(self) -> str:
        """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the study's SQLite store in its output folder."""
        return chosen_tracking_uri(self.tracking_uri, sqlite_uri(self.resolved_output_dir() / DEFAULT_DB_NAME))


def corpus_content_identity(directory: Path) -> str:
    """A built corpus's content identity (config hash and per-shard row digests), never its path.

    A corpus that is not built yet is named by its path, so ``recon study plan`` works before it
    exists; the stage id then changes once it is built (and with every differently built corpus).
    """
    from recon.data_prep.corpus import corpus_identity

    try:
        return corpus_identity(directory)
    except ReconError:
        return f"unbuilt:{directory}"


STUDY_PROTOCOL_SECTIONS = {"data": DataOptions, "head": HeadOptions, "training": TrainConfig,
                           "fewshot.settings": FewshotSettings, "pretrain.*": PretrainConfig}


def load_spec(path: str | Path) -> StudySpec:
    """Read, merge and validate a study file; raise :class:`SpecError` naming file, field and line."""
    path = Path(path).resolve()
    merged, layers = merged_layers(path)
    merged = with_protocol(merged, STUDY_PROTOCOL_SECTIONS)
    try:
        spec = StudySpec.model_validate(merged)
        spec._source = path
        return spec
    except ValidationError as exc:
        problems = validation_problems(exc, layers, "study", StudySpec)
        raise SpecError("invalid study spec: " + "; ".join(problems)) from None
