"""What determines one fine-tuning run: :class:`FinetuneConfig` (its identity is the trial id's payload), the
data it reads (:class:`DataOptions`) and the CNN baseline's training (:class:`CnnTraining`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from recon.core.config import Config, ConfigError, knob
from recon.core.defaults import DEFAULT_ENCODER
from recon.core.errors import ReconError
from recon.data_prep.formats import FORMATS_HELP, InputFormat
from recon.data_prep.loaders import KINDS
from recon.data_prep.name_pools import UNTYPED_POLICIES
from recon.data_prep.name_swap import VIEW_KINDS, check_kinds
from recon.data_prep.registry import supervised_datasets
from recon.core.protocol import POINTS, point_default

from recon.models.nets.cnn import CNN_DEFAULTS, DEFAULT_WORD_VECTORS
from recon.models.nets.heads import HeadOptions
from recon.models.train.config import TrainConfig

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

    dataset: str | None = knob("semeval", f"registered dataset ({', '.join(supervised_datasets())}), or none with "
                                          "--path")
    path: str | None = knob(None, "a directory with train/dev/test files, in place of --dataset")
    kind: str | None = knob(None, "file format of --path", choices=tuple(KINDS))
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
    # Test views: evaluations of the trained weights, so none of them is part of the trial id.
    eval_views: tuple[str, ...] = knob((), f"also score the trained model on these test views: {', '.join(VIEW_KINDS)} "
                                           "(name swaps drawn from the training set; onlyc: the test set in OnlyC)",
                                       identity=False)
    view_seed: int = knob(0, "seed of the name-swap draws (one view for every trial of a study)", ge=0,
                          identity=False)
    view_untyped: Literal["pool", "keep"] = knob(
        "pool", "mentions without an entity type: swapped among untyped names (pool), or left unchanged (keep)",
        choices=UNTYPED_POLICIES, identity=False)
    view_avoid: str | None = knob(None, "a built pre-training corpus folder, or a text file of names, whose text "
                                        "swap-unseen names must not occur in", identity=False)
    # Kept weights let a test view added later score this trial without training it again: a file beside the
    # results (weights.safetensors, ~90 MB for MiniLM in float32), never part of the trial id.
    keep_weights: bool = knob(False, "also write the trained model's weights (weights.safetensors, its state_dict "
                                     "as trained) to the output folder, so test views can be scored later "
                                     "without training again", identity=False)

    def check(self) -> None:
        super().check()
        check_source_and_format(self, "a path (+ kind)")
        try:
            views = (self.eval_views,) if isinstance(self.eval_views, str) else self.eval_views or ()
            self.eval_views = tuple(dict.fromkeys(check_kinds(views)))
        except ReconError as exc:
            raise ConfigError("eval_views", str(exc)) from None

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


__all__ = ["FinetuneConfig", "DataOptions", "CnnTraining", "check_source_and_format", "EVAL_SAMPLE_SEED",
           "CHECKPOINT_PREFIX"]
