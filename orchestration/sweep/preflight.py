"""What a sweep needs, checked before its MLflow run, its Optuna journal or any trial is created.

The same checks as a study's (:mod:`recon.orchestration.study.preflight`), for the sweep's one base
configuration: output folder, tracking store and storage writable; the corpus built (``@demo`` is built by the
sweep); the starting encoder present; the probe's dataset here (a public one is fetched when missing); the
device when Ray is started here. With Ray running: storage shared by every node and a node able to hold a trial.
"""
from __future__ import annotations

from typing import Callable, Optional

from recon.core.hardware import gpu_memory_bytes
from recon.core.preflight import (Preflight, Problem, cluster_gpu_memory_bytes, resource_problems,
                                  storage_problems_on_cluster)
from recon.core.storage import Storage
from recon.models.pretrain.config import DEMO_CORPUS
from recon.models.train.checks import DATA_FIX, encoder_problems
from recon.orchestration.study.preflight import fetch_missing_data, files_needed, output_problems
from recon.orchestration.sweep.spec import SweepSpec


def sweep_problems(spec: SweepSpec, store: Storage, tracking_uri: str, *, local_ray: bool = True,
                   base_url: Optional[str] = None, log: Callable[[str], None] = print) -> list[Problem]:
    from recon.data_prep.registry import check_available

    pf = Preflight("")
    output_problems(pf, "sweep", spec.resolved_output_dir(), store, tracking_uri)
    pf.storage(store.uri)
    pretrain, probe = spec.resolve({})
    if pretrain.corpus != DEMO_CORPUS:
        corpus = spec.resolve_path(pretrain.corpus)
        pf.existing_dir(corpus, "pretrain.corpus", f"build it with `recon corpus build ... --out {corpus}`")
    pf.extend(encoder_problems(pretrain.encoder_name, "the sweep's encoder"))
    if probe.dataset:
        needs = dict(split=probe.split, split_source=probe.data.split_source)
        files = files_needed(probe.dataset, ("train", "dev", "test"), **needs)
        if pretrain.corpus == DEMO_CORPUS:  # built from FewRel val_wiki and Wiki80 dev
            files += files_needed("fewrel", ("val",)) + files_needed("wiki80", ("dev",))
        explicit = spec.resolve_path(probe.data.data_dir) if probe.data.data_dir else None
        fetch_missing_data(files, explicit, base_url, log)
        pf.extend(Problem(f"the probe's dataset {probe.dataset}: {reason}", DATA_FIX)
                  for reason in check_available(probe.dataset, spec.data_root(), **needs))
    if local_ray:
        if spec.ray.gpus_per_trial > 0 or pretrain.use_gpu:
            pf.gpu("the sweep's trials (gpus_per_trial / use_gpu)",
                   "run the sweep on a Ray cluster with GPUs (--address), or ask for none in the sweep file")
        pf.device(probe.training.device, "finetune.training.device")
        if spec.ray.gpus_per_trial > 0:
            pf.extend(sweep_packing_problems(spec, gpu_memory_bytes()))
    return pf.problems


def sweep_cluster_problems(spec: SweepSpec, store: Storage) -> list[Problem]:
    trial = {"CPU": spec.ray.cpus_per_trial, "GPU": spec.ray.gpus_per_trial, **spec.ray.trial_resources}
    problems = storage_problems_on_cluster(store.uri) + resource_problems(
        trial, "one sweep trial", "lower ray.cpus_per_trial / gpus_per_trial / trial_resources, or add such a node")
    if spec.ray.gpus_per_trial > 0:
        problems += sweep_packing_problems(spec, cluster_gpu_memory_bytes())
    return problems


SIZE_KNOBS = ("batch_size", "micro_batch_size", "max_length")  # the swept values that set a trial's memory


def sweep_packing_problems(spec: SweepSpec, gpu_bytes: Optional[int]) -> list[Problem]:
    """Whether the sweep's largest trial fits in its share (``ray.gpus_per_trial``) of a ``gpu_bytes`` GPU: the
    space's largest batch and length, the larger of the pre-training worker's and the probe's estimates
    (:mod:`recon.models.train.memory`)."""
    from recon.models.train.memory import GIB, finetune_memory_bytes, packing_problem, pretrain_memory_bytes

    if gpu_bytes is None or spec.ray.gpus_per_trial <= 0:
        return []
    largest = {name: max(domain.candidates()) for name, domain in spec.domains.items()
               if name.rpartition(".")[2] in SIZE_KNOBS}
    pretrain, probe = spec.resolve(largest)
    need = max(pretrain_memory_bytes(pretrain)[0], finetune_memory_bytes(probe)[0] if probe.dataset else 0)
    text = packing_problem(need, gpu_bytes, spec.ray.gpus_per_trial, "the sweep's largest trial")
    return [Problem(text, "raise ray.gpus_per_trial, or narrow the batch sizes / lengths the space reaches "
                          f"(estimate: {need / GIB:.1f} GiB)")] if text else []


__all__ = ["sweep_problems", "sweep_cluster_problems", "sweep_packing_problems"]
