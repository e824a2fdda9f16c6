"""A trial's data as MLflow dataset inputs (name, source, digest) and its run description."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

from recon.core.hashing import file_sha256
from recon.core.privacy import redact
from recon.orchestration.study.trial import Trial
from recon.orchestration.tracking.client import DATASET_CONTEXT_TAG

def _dataset_folder(trial: Trial, data_root: Optional[Path]) -> tuple[Optional[Path], Any]:
    from recon.data_prep.registry import REGISTRY

    spec = REGISTRY.get(trial.dataset)
    if trial.config.get("path"):
        return Path(trial.config["path"]).expanduser(), spec
    if spec is None:
        return None, None
    if data_root is None:
        from recon.data_prep.datadir import existing_data_root

        data = trial.config.get("data") or (trial.config.get("settings") or {}).get("data") or {}
        data_root = existing_data_root(data.get("data_dir"))
    return (Path(data_root) / spec.directory if data_root else None), spec


def dataset_inputs(trial: Trial, result: dict[str, Any], data_root: Optional[Path] = None) -> list:
    """The trial's data as MLflow ``DatasetInput`` s: training data (the ``train_<split>`` file, or
    the train file a seeded subset was drawn from, named so), dev and test; context tags
    ``train`` / ``dev`` / ``test`` (few-shot: ``eval``). Name ``<dataset>/<split>``, source the
    local file, digest the first 16 hex digits of its sha256 (all 64 in the profile)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    folder, spec = _dataset_folder(trial, data_root)
    if folder is None or not folder.is_dir():
        return []
    wanted: list[tuple[str, str, Path, dict]] = []  # (name, context, file, profile extras)
    if trial.kind == "finetune":
        from recon.data_prep.registry import subset_file

        split = float(trial.config.get("split") or 1.0)
        data = trial.config.get("data") or {}
        used = result.get("split_source") or ("full" if split >= 1 else data.get("split_source") or "seeded")
        train_name = (spec.splits.get("train") if spec else None) or "train.txt"
        named = Path(str(result["train_file"])).name if result.get("train_file") else None
        if used == "paper":
            path = folder / named if named and (folder / named).is_file() else subset_file(folder, split, spec)
            if path is not None:
                wanted.append((f"{trial.dataset}/{path.stem}", "train", path, {"subset": "paper file"}))
        else:
            label = "train" if used == "full" else f"train@{split:g} seeded s{trial.seed}"
            wanted.append((f"{trial.dataset}/{label}", "train", folder / train_name,
                           {"subset": used, "fraction": split, "seed": trial.seed}))
        max_eval = data.get("max_eval")
        for split_name in ("dev", "test"):
            name = (spec.splits.get(split_name) if spec else None) or f"{split_name}.txt"
            wanted.append((f"{trial.dataset}/{split_name}", split_name, folder / name,
                           {"max_eval": max_eval} if max_eval else {}))
    elif spec is not None:
        for split_name, name in spec.splits.items():
            wanted.append((f"{trial.dataset}/{split_name}", "eval", folder / name, {}))
    out = []
    for name, context, path, extras in wanted:
        if not path.is_file():
            continue
        sha = file_sha256(path, memo=True)
        profile = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha, **extras}
        source = json.dumps({"uri": redact(path.resolve().as_uri())})
        dataset = Dataset(name=name, digest=sha[:16], source_type="local", source=source,
                          profile=json.dumps(profile))
        out.append(DatasetInput(dataset, [InputTag(DATASET_CONTEXT_TAG, context)]))
    return out


def trial_description(trial: Trial, result: dict[str, Any], finals: Mapping[str, float], datasets: list[str],
                      study: str) -> str:
    """A trial run's description (Markdown): what it is, its headline figures, its data and notes."""
    from recon.data_prep.registry import display_name

    lines = [f"**{trial.model}** on **{display_name(trial.dataset)} {trial.setting}**, input format "
             f"**{trial.format}**, seed {trial.seed}: trial `{trial.trial_id}` of study *{study}* "
             f"({trial.kind}; tables {', '.join(trial.tables)})."]
    figures = []
    for split in ("test", "dev"):
        if f"{split}_metric" in finals:
            figures.append(f"{split} {trial.metric} **{finals[f'{split}_metric']:.4f}**")
    if figures:
        best = f" at the best dev epoch ({int(finals['best_epoch'])})" if "best_epoch" in finals else ""
        lines += ["", "; ".join(figures) + best + "."]
    if datasets:
        lines += ["", "Data: " + ", ".join(f"`{d}`" for d in datasets) + " (see Datasets used)."]
    notes = result.get("notes")
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in ([notes] if isinstance(notes, str) else notes)]
    lines += ["", "Artifacts: `result.json` (everything the trainer returned), `predictions.jsonl` (test predictions, "
              "read by the study's significance tests and error browser); per-epoch curves under Model metrics "
              "(`epoch/...`)."]
    return "\n".join(lines)


# ------------------------------------------------------------------ the parent run's tables
