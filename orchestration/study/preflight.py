"""What a study run needs, checked before any trial, pre-training step or corpus task starts.

``recon study plan`` prints these problems; ``recon study run|resume`` refuses with all of them in one message
(exit 2) before it creates its MLflow run. Three groups:

* :func:`study_problems` (files only, this machine): the output folder, the tracking store's folder and the
  storage location writable; the models' encoders and checkpoints present; the corpus of every pre-training
  stage that still has to run present; the device a trial or stage asks for available here (checked only when
  the study runs on a Ray started here: on a cluster the nodes' devices are what counts).
* :func:`cluster_problems` (Ray running): the storage the same place on every node, and a node big enough
  for a trial's and a stage worker's resources (else Tune would wait for them forever).
* :func:`fetch_missing_data`: the public datasets the runnable cells need, downloaded (verified, with
  progress) when they are missing; offline, a refusal within seconds that says how to supply them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from recon.core.errors import Refused
from recon.core.hardware import gpu_memory_bytes
from recon.core.preflight import (Preflight, Problem, cluster_gpu_memory_bytes, resource_problems,
                                  storage_problems_on_cluster)
from recon.core.storage import Storage
from recon.models.train.checks import encoder_problems
from recon.orchestration.cluster.job_outputs import job_output_problems
from recon.orchestration.study.spec import StudySpec
from recon.orchestration.study.stages import STAGE_FILE
from recon.orchestration.study.trial import Trial
from recon.orchestration.tracking.health import tracking_problems

BASE_URL_ENV = "RECON_DATA_BASE_URL"


def _stages_to_run(spec: StudySpec, trials: Iterable[Trial], store: Storage) -> list[str]:
    """The pre-training stages the trials need whose final encoder is not in storage yet."""
    refs = {spec.model(t.model).pretrain_ref for t in trials} - {None}
    return sorted(name for name in refs
                  if not store.exists(f"pretrain/{name}-{spec.stage_hash(name)}/{STAGE_FILE}"))


def output_problems(pf: Preflight, kind: str, output_dir, store: Storage, tracking_uri: str) -> None:
    """What a study or sweep (``kind``) writes, checked into ``pf``: its output folder, a submitted job's places
    (:mod:`recon.orchestration.cluster.job_outputs`), the SQLite store's folder, the tracking server answering."""
    pf.writable_dir(output_dir, "the output folder", f"set output_dir in the {kind} file to a folder you can write")
    pf.extend(job_output_problems(kind, store.uri, tracking_uri))  # a submitted job's outputs outlive it
    tracking_problems(pf, kind, tracking_uri)


def study_problems(spec: StudySpec, trials: Sequence[Trial], store: Storage, tracking_uri: str, *,
                   local_ray: bool = True) -> list[Problem]:
    """Everything the (unfinished, runnable) ``trials`` need that is missing or unusable here."""
    pf = Preflight("")
    output_problems(pf, "study", spec.resolved_output_dir(), store, tracking_uri)
    pf.storage(store.uri)
    encoders: dict[str, list[str]] = {}  # each encoder is looked up once, naming everything that uses it
    used = {t.model for t in trials}
    for model in spec.models:  # a custom ``trainer`` loads its models itself: only its stages are checked
        if model.name not in used or model.kind == "cnn" or spec.trainer:
            continue
        if model.checkpoint and model.pretrain_ref is None:
            pf.extend(encoder_problems(str(spec.resolve_path(model.checkpoint)), f"model {model.name}'s checkpoint"))
        elif model.pretrain_ref is None:  # a stage's model starts from the stage's encoder, checked below
            encoders.setdefault(model.encoder or spec.encoder, []).append(f"model {model.name}")
    gpu_fix = "run the study on a Ray cluster with GPUs (--address), or ask for none in the study file"
    for name in _stages_to_run(spec, trials, store):
        stage = spec.pretrain[name]
        if stage.corpus != "@demo":
            corpus = spec.resolve_path(stage.corpus)
            pf.existing_dir(corpus, f"pre-training stage {name}: corpus", "build it with `recon corpus build ... "
                            f"--out {corpus}` or name a built corpus in pretrain.{name}.corpus")
        encoders.setdefault(stage.encoder or spec.encoder, []).append(f"pre-training stage {name}")
        if local_ray and stage.use_gpu:
            pf.gpu(f"pre-training stage {name} (use_gpu: true)", gpu_fix)
    for encoder, users in encoders.items():
        pf.extend(encoder_problems(encoder, f"the encoder of {', '.join(users)}"))
    if local_ray:
        if spec.ray.gpus_per_trial > 0:
            pf.gpu(f"ray.gpus_per_trial: {spec.ray.gpus_per_trial:g}", gpu_fix)
            pf.extend(packing_problems(spec, trials, gpu_memory_bytes()))
        if any(t.kind == "finetune" for t in trials):
            pf.device(spec.training.device, "training.device")
    return pf.problems


def cluster_problems(spec: StudySpec, trials: Sequence[Trial], store: Storage) -> list[Problem]:
    """With Ray running: storage shared by every node, and some node able to hold a trial and a stage worker."""
    problems = storage_problems_on_cluster(store.uri)
    trial = {"CPU": spec.ray.cpus_per_trial, "GPU": spec.ray.gpus_per_trial, **spec.ray.trial_resources}
    if trials:
        problems += resource_problems(trial, "one trial", "lower ray.cpus_per_trial / gpus_per_trial / "
                                                          "trial_resources, or add such a node")
        if spec.ray.gpus_per_trial > 0:
            problems += packing_problems(spec, trials, cluster_gpu_memory_bytes())
    for name in _stages_to_run(spec, trials, store):
        stage = spec.pretrain[name]
        worker = {"CPU": stage.cpus_per_worker, "GPU": 1.0 if stage.use_gpu else 0.0, **stage.worker_resources}
        problems += resource_problems(worker, f"one worker of pre-training stage {name}",
                                      f"change pretrain.{name}'s use_gpu / cpus_per_worker / worker_resources, "
                                      "or add such a node")
    return problems


def packing_problems(spec: StudySpec, trials: Sequence[Trial], gpu_bytes: Optional[int]) -> list[Problem]:
    """Each model whose fine-tuning trials would not fit in their share (``ray.gpus_per_trial``) of a
    ``gpu_bytes`` GPU, by the estimate of :mod:`recon.models.train.memory` (its largest trial per model).

    No GPU found (``gpu_bytes`` None) is not a problem here: the GPU checks beside this one say so."""
    from recon.models.train.memory import GIB, finetune_length, finetune_memory_bytes, packing_problem

    if gpu_bytes is None or spec.ray.gpus_per_trial <= 0:
        return []
    largest: dict[str, tuple[int, Trial]] = {}
    for trial in trials:
        if trial.kind != "finetune" or trial.config.get("model") == "cnn":
            continue
        need, _ = finetune_memory_bytes(trial.runner_config())
        if need > largest.get(trial.model, (0, trial))[0]:
            largest[trial.model] = (need, trial)
    problems = []
    for model, (need, trial) in largest.items():
        cfg = trial.runner_config()
        text = packing_problem(need, gpu_bytes, spec.ray.gpus_per_trial,
                               f"a trial of model {model} (batch {cfg.training.batch_size}, "
                               f"length {finetune_length(cfg)})")
        if text:
            problems.append(Problem(text, "raise ray.gpus_per_trial, or lower training.batch_size or "
                                          f"data.max_length (each trial's estimate: {need / GIB:.1f} GiB)"))
    return problems


def files_needed(name: str, needs: Sequence[str], split: float = 1.0, split_source: str = "seeded") -> list[str]:
    """The data files (``<folder>/<file>``) a run on dataset ``name`` reads for ``needs`` (``train`` meaning the
    training data of ``split`` drawn by ``split_source``), as :func:`recon.data_prep.registry.check_available`
    reads them."""
    from recon.data_prep.registry import get_spec

    spec = get_spec(name)
    files = []
    for need in needs:
        paper_file = spec.paper_splits.get(f"train_{split:g}")
        if need == "train" and split_source == "paper" and split < 1 and paper_file:
            files.append(paper_file)
        elif need in spec.splits:
            files.append(spec.splits[need])
    return [f"{spec.directory}/{f}" for f in files]


def study_files_needed(spec: StudySpec, trials: Iterable[Trial], store: Storage) -> set[str]:
    """Every data file the ``trials`` read, and the benchmarks the ``@demo`` corpus of a stage still to run is
    built from (FewRel val_wiki, Wiki80 dev)."""
    trials = list(trials)
    out: set[str] = set()
    for t in trials:
        c = t.config
        if t.kind == "finetune":
            out.update(files_needed(c["dataset"], ("train", "dev", "test"), c["split"], c["data"]["split_source"]))
        else:
            out.update(files_needed(c["dataset"], ("val",)))
            if c["settings"]["train_episodes"] > 0:
                out.update(files_needed("wiki80", ("train", "dev"), 0.1, "paper"))
    if any(spec.pretrain[name].corpus == "@demo" for name in _stages_to_run(spec, trials, store)):
        out.update(files_needed("fewrel", ("val",)) + files_needed("wiki80", ("dev",)))
    return out


def fetch_missing_data(relpaths: Iterable[str], data_dir: Optional[str], base_url: Optional[str],
                       log: Callable[[str], None]) -> list[str]:
    """Download the public files among ``relpaths`` (and their datasets' label files) that no data folder the
    loaders search holds, into the first such folder; returns the files fetched. Raises a :class:`ReconError`
    saying how to supply the data when the server cannot be reached or a file does not verify. Files recon
    cannot download (TACRED's) are left to the caller, which reports their cells as unavailable."""
    from recon.data_prep.datadir import candidate_dirs, fetch_target_dir
    from recon.data_prep.fetch import DEFAULT_BASE_URL, SOURCES, STATUS_FAILED, SourceUnreachable, fetch_sources
    from recon.data_prep.registry import get_spec

    wanted = set(relpaths)
    folders = {path.split("/", 1)[0] for path in wanted}
    split_files = {f"{s.directory}/{f}" for name in {d for src in SOURCES for d in src.datasets}
                   for s in [get_spec(name)] for f in (*s.splits.values(), *s.paper_splits.values())}
    sources = [src for src in SOURCES if src.relpath in wanted
               or (src.relpath.split("/", 1)[0] in folders and src.relpath not in split_files)]  # label files
    here = [path for path, _ in candidate_dirs(data_dir)]
    missing = [src for src in sources if not any((base / src.relpath).is_file() for base in here)]
    if not missing:
        return []
    url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    target = fetch_target_dir(data_dir)
    names = sorted({d for src in missing for d in src.datasets})
    log(f"data: {len(missing)} file(s) of {', '.join(names)} missing here; fetching from {url} into {target}")
    how = (f"supply the files: `recon data fetch {' '.join(names)}` where there is network (or --base-url / "
           f"${BASE_URL_ENV} for a mirror), or point $RECON_DATA_DIR or the file's data: {{data_dir: DIR}} at "
           "a folder that holds them")
    made = [p for p in (target, *target.parents) if not p.exists()]  # removed again if nothing arrives
    had = set(_folders(target))
    try:
        results = fetch_sources(missing, target, url, timeout=10.0, retries=1, backoff=1.0)
    except SourceUnreachable as exc:
        _remove_empty(target, made, had)
        raise Refused(f"the study needs {len(missing)} data file(s) that are not here "
                         f"({', '.join(src.relpath for src in missing)}), and {exc} Where there is network, "
                         f"`recon data fetch {' '.join(names)}` gets them.") from None
    failed = [r for r in results if r.status == STATUS_FAILED]
    if failed:
        listed = "; ".join(f"{r.relpath}: {r.detail}" for r in failed)
        _remove_empty(target, made, had)
        raise Refused(f"the study needs data that could not be fetched ({listed}); {how}")
    log(f"data: fetched {', '.join(r.relpath for r in results)}, each verified against its pinned digest")
    return [r.relpath for r in results]


def _folders(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_dir()] if root.is_dir() else []


def _remove_empty(target: Path, made: list[Path], had: set[Path]) -> None:
    """Folders a failed fetch made under ``target`` (a dataset's folder for its files) and for ``target`` itself,
    deepest first, when they stayed empty; folders that were there before, and anything holding a file, stay."""
    for folder in sorted(set(_folders(target)) - had, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break


__all__ = ["study_problems", "output_problems", "cluster_problems", "fetch_missing_data", "files_needed", "study_files_needed",
           "BASE_URL_ENV"]
