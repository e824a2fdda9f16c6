"""One unit of a study's work: a :class:`Trial` (a grid cell and seed, or a few-shot setting), its stable id
(:func:`trial_id`: the hash of the resolved config's identity) and its labels."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from recon.core.hashing import stable_hash
from recon.data_prep.registry import display_names, metric_of, reported_metric
from recon.models.train.fewshot import FewshotConfig
from recon.models.train.finetune_config import FinetuneConfig

PAPER_DATASET_NAMES = display_names()


def split_label(split: float) -> str:
    return f"{split * 100:g}%"


def nk_label(nk: str) -> str:
    n, k = nk.split("-")
    return f"{n}-way {k}-shot"


@dataclass(frozen=True)
class Trial:
    """One Tune trial: a grid cell and seed (supervised) or an N-way K-shot setting (few-shot).

    ``config`` is the trainer's whole config (``FinetuneConfig`` / ``FewshotConfig`` as a dict);
    ``trial_id`` is the hash of its identity (the fields that change results).
    """

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
        """The metric tables report for this trial: an explicit ``training.metric``, else the dataset's under
        the config's scorer (SemEval's official score with ``data.scorer: official``)."""
        training = self.config.get("training") or self.config.get("settings", {}).get("training", {})
        if training.get("metric"):
            return training["metric"]
        if self.kind == "finetune":
            return reported_metric(self.dataset, (self.config.get("data") or {}).get("scorer", "recon"))
        return metric_of(self.dataset)

    def runner_config(self) -> Any:
        """The config object the trainer receives (references such as ``@pretrain.cp`` unresolved)."""
        cls = FinetuneConfig if self.kind == "finetune" else FewshotConfig
        return cls.from_dict(self.config)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tables"] = list(self.tables)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trial":
        return cls(**{**data, "tables": tuple(data["tables"])})


def trial_id(kind: str, cfg: Any, trainer: Optional[str] = None) -> str:
    """Hash of the trainer's resolved config identity (and of a custom trainer, which changes results)."""
    payload = {"kind": kind, **cfg.identity()}
    if trainer:
        payload["trainer"] = trainer
    return stable_hash(payload)


def cell_label(trial: Trial) -> str:
    """A grid cell across its seeds, e.g. ``wiki80 100% C+M BERT``."""
    return f"{trial.dataset} {trial.setting} {trial.format} {trial.model}"


__all__ = ["Trial", "trial_id", "split_label", "nk_label", "cell_label", "PAPER_DATASET_NAMES"]
