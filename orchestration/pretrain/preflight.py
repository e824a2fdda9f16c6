"""What ``recon pretrain`` (and a study's pre-training stage) needs, checked before anything is written.

:func:`pretrain_problems` (this machine, files only): the corpus built, the starting encoder present, the
storage location (``--out``) and the tracking store's folder writable, a GPU here when ``use_gpu`` and Ray is
started here, and the seed in range. :func:`pretrain_cluster_problems` (Ray running): ``--out`` the same
place on every node (the workers write their checkpoints there) and a node able to hold one worker.
"""
from __future__ import annotations

from recon.core.preflight import Preflight, Problem, resource_problems, storage_problems_on_cluster
from recon.core.ray_session import cluster_to_join
from recon.models.train.checks import encoder_problems
from recon.orchestration.cluster.job_outputs import job_output_problems
from recon.orchestration.pretrain.run import PretrainRun
from recon.orchestration.tracking.health import tracking_problems


def pretrain_problems(cfg: PretrainRun, tracking_uri: str) -> list[Problem]:
    from recon.core.errors import ReconError
    from recon.core.storage import is_uri
    from recon.data_prep.corpus import read_manifest

    pf = Preflight("")
    pf.extend(job_output_problems("pretrain", cfg.storage_root, tracking_uri))  # outlive a submitted job
    if is_uri(cfg.corpus):
        pf.add(f"--corpus {cfg.corpus} is a URI", "give the corpus as a folder on this machine; recon publishes "
                                                  "it to the storage location for the worker nodes")
    else:
        try:
            read_manifest(cfg.corpus)
        except ReconError as exc:
            pf.add(f"--corpus: {exc}", "build it with `recon corpus build --out DIR` (or `recon corpus demo`)")
    pf.extend(encoder_problems(cfg.encoder_name, "--encoder"))
    pf.storage(cfg.storage_root, "--out", "give --out a folder or URI you can write (shared by every node)")
    tracking_problems(pf, "pre-training run", tracking_uri)
    if cfg.use_gpu and cluster_to_join(cfg.address) is None:
        pf.gpu("--use-gpu", "run on a Ray cluster with GPUs (--address), or leave --use-gpu off")
    pf.seed(cfg.seed)
    return pf.problems


def pretrain_cluster_problems(cfg: PretrainRun) -> list[Problem]:
    worker = {"CPU": cfg.cpus_per_worker, "GPU": 1.0 if cfg.use_gpu else 0.0, **cfg.worker_resources}
    return storage_problems_on_cluster(cfg.storage_root, "--out") + resource_problems(
        worker, "one pre-training worker", "lower --cpus-per-worker / --worker-resources, drop --use-gpu, or add "
                                           "such a node")


__all__ = ["pretrain_problems", "pretrain_cluster_problems"]
