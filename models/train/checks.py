"""What a fine-tuning or few-shot run needs, checked before it loads anything: its data files, its encoder or
checkpoint, its device and its seed (the preflight of ``recon finetune`` / ``fewshot`` and of every study trial).

Each function returns :class:`recon.core.preflight.Problem` s; the caller collects them and refuses once.
References a study resolves itself (``@pretrain.<stage>``: the stage makes the checkpoint) are not checked here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from recon.core.preflight import Problem, Preflight
from recon.data_prep.registry import check_available
from recon.models.train.fewshot import FewshotConfig
from recon.models.train.finetune_config import CHECKPOINT_PREFIX, FinetuneConfig

DATA_FIX = ("put the files in the data directory (--data-dir, $RECON_DATA_DIR, ../shared/datasets or "
            "~/.cache/recon/datasets), or download the public ones with `recon data fetch NAME`")


BAD_FILE_FIX = ("correct or replace the file named above (`recon data fetch NAME` downloads a public dataset's "
                "original files)")
_MISSING = ("no ", "not found", "does not exist", "missing")


def _data(reasons: list[str], label: str) -> list[Problem]:
    """Each reason a dataset cannot be read, with the fix that fits it: where to put missing files, or to
    correct a file that is there but unusable (empty, a folder, a broken link, two copies)."""
    return [Problem(f"{label}: {reason}", DATA_FIX if reason.startswith(_MISSING[0]) or
                    any(m in reason for m in _MISSING[1:]) else BAD_FILE_FIX) for reason in reasons]


def encoder_problems(name: Optional[str], what: str) -> list[Problem]:
    """The encoder or recon checkpoint ``name`` (skipped for the CNN and for a study's stage references)."""
    if not name or name in ("cnn", "bert") or name.startswith(CHECKPOINT_PREFIX):
        return []
    from recon.models.nets.loading import encoder_problem

    reason = encoder_problem(name)
    return [Problem(f"{what}: {reason}", "give an encoder alias (minilm), a model folder, a recon checkpoint "
                                         "folder, or a Hugging Face name that is cached here")] if reason else []


def finetune_problems(cfg: FinetuneConfig) -> list[Problem]:
    """Data of the split and format, the model (encoder or checkpoint), device and seed of one run."""
    pf = Preflight("")
    label = cfg.dataset or cfg.path
    pf.extend(_data(check_available(cfg.dataset, cfg.data.data_dir, split=cfg.split,
                                    split_source=cfg.data.split_source, path=cfg.path, kind=cfg.kind),
                    f"dataset {label} ({cfg.split * 100:g}% of its training data)"))
    if not cfg.is_cnn:
        pf.extend(encoder_problems(cfg.encoder if cfg.model == "bert" else cfg.model,
                                   "--encoder" if cfg.model == "bert" else "--model"))
        pf.device(cfg.training.device)
    pf.seed(cfg.training.seed)
    if cfg.eval_views:
        from recon.data_prep.name_swap import views_format_problem

        problem = views_format_problem(cfg.input_format)
        if problem:
            pf.add(f"--eval-views with --input-format {cfg.input_format}: {problem}",
                   "train in C+M (or OnlyM) to score views, or leave out --eval-views")
    if cfg.view_avoid and not Path(cfg.view_avoid).expanduser().exists():
        pf.add(f"--view-avoid {cfg.view_avoid} does not exist",
               "give a built pre-training corpus folder or a text file of names, one per line")
    return pf.problems


def fewshot_problems(cfg: FewshotConfig) -> list[Problem]:
    """The evaluation file, the Wiki80 training files when the run trains, the encoder, device and seed."""
    pf = Preflight("")
    if cfg.path is None:
        pf.extend(_data(check_available(cfg.dataset, cfg.data_dir, needs=("val",)), f"dataset {cfg.dataset}"))
    elif not Path(cfg.path).expanduser().exists():
        pf.add(f"--path {cfg.path} does not exist", "give a FewRel-format JSON file or a folder holding val.json")
    if cfg.settings.train_episodes > 0:
        pf.extend(_data(check_available("wiki80", cfg.data_dir, needs=("train", "dev"), split=0.1,
                                        split_source="paper"), "few-shot training data (Wiki80)"))
    pf.extend(encoder_problems(cfg.encoder, "--encoder"))
    pf.device(cfg.settings.training.device)
    pf.seed(cfg.settings.training.seed)
    return pf.problems


__all__ = ["finetune_problems", "fewshot_problems", "encoder_problems", "DATA_FIX"]
