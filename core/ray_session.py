"""Ray settings of a study (:class:`RayConfig`) and connecting to Ray (:func:`ensure_ray`).

:class:`RayConfig` is the ``ray:`` section of a study spec: cluster address, local CPUs and what each
trial reserves; none of it is part of a trial id. :func:`ensure_ray` is how the study driver
(``recon study run``/``resume``, through ``study.runner``) and ``recon pretrain`` connect: they join
the cluster Ray itself would join (``address``, else ``RAY_ADDRESS``, else one started on this
machine with ``ray start``; :func:`cluster_to_join`), otherwise a local Ray is started with
``num_cpus`` CPUs (default: all local CPUs) and no dashboard (the MLflow UI is the dashboard). Either way every
worker runs :func:`quiet_workers` first, so a run prints progress rather than log noise, and starts
with one glibc malloc arena (:data:`WORKER_MALLOC_ENV`: why is told there). It is the one ``ray.init``
of recon: the corpus and KG builders call it too (with ``log_to_driver=False``: Ray Data's tasks
print nothing a user needs).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from recon.core.config import Config, knob


@dataclass
class RayConfig(Config):
    """Where a study runs and how much of the cluster each trial takes (none of it changes results)."""

    address: Optional[str] = knob(None, "Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)",
                                  identity=False)
    num_cpus: Optional[int] = knob(None, "CPUs of the local Ray started for you (default: all)", ge=1,
                                   identity=False)
    cpus_per_trial: float = knob(1.0, "CPUs reserved per trial (also its torch threads)", gt=0, identity=False)
    gpus_per_trial: float = knob(0.0, "GPUs per trial; fractions share a GPU (e.g. 0.25)", ge=0, identity=False)
    max_concurrent_trials: int = knob(1, "trials running at once", ge=1, identity=False)
    max_retries: int = knob(0, "retries of a failed trial", ge=0, identity=False)
    trial_resources: dict[str, float] = knob(factory=dict, help="custom Ray resources each trial needs, e.g. "
                                             "{\"gpu_node\": 1} to keep trials off the head node", identity=False)


def cluster_to_join(address: Optional[str] = None) -> Optional[str]:
    """The running cluster ``ray.init`` would join, or None when it would start a local Ray.

    Ray's own rule: ``address`` if given, else ``$RAY_ADDRESS``, else a cluster started on this
    machine with ``ray start`` (its address in Ray's temp folder). Passing ``num_cpus`` while
    joining is a ``ValueError`` in Ray, so the caller must know which case it is in.
    """
    from ray._private.services import canonicalize_bootstrap_address

    if address and address.startswith(("ray://", "http://", "https://")):
        return address
    try:
        return canonicalize_bootstrap_address(address)
    except Exception:  # no cluster recorded on this machine (or a stale record): start a local Ray
        return address or os.environ.get("RAY_ADDRESS") or None


def ensure_ray(*, address: Optional[str] = None, num_cpus: Optional[int] = None, log_to_driver: bool = True) -> bool:
    """Join the cluster Ray would join, or start a local Ray with ``num_cpus``; True when this call did.

    ``num_cpus`` applies only to a Ray started here: joining a running cluster never passes it.
    Token authentication (on by default for clusters started by Ray 2.60) needs nothing here:
    ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN`` (or ``~/.ray/auth_token``) are read by Ray itself.
    """
    import ray

    if ray.is_initialized():
        return False
    from recon.core.privacy import apply_offline_env

    # Ray's usage stats, MLflow's and the Hub's telemetry off (unless the user set them) in the Ray
    # started here (it inherits this environment) and in every worker (also on a joined cluster).
    runtime_env = {"worker_process_setup_hook": "recon.core.ray_session.quiet_workers",
                   "env_vars": {**worker_malloc_env(), **apply_offline_env()}}
    target = cluster_to_join(address)
    if target:
        ray.init(address=target, runtime_env=runtime_env, log_to_driver=log_to_driver)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=log_to_driver)
    return True


# glibc malloc for Ray workers: one arena. Tune and Ray Train run the training function in a thread
# of the worker, and glibc gives such a thread its own arena, whose heap it gives back to the kernel
# (madvise) whenever its top grows past the trim threshold, then faults the pages in again, zeroed,
# on the next step's allocations. With two trials on two cores that kernel time made every step in
# Tune 15-50% slower than the same step in a plain process (18% system time in the workers; 1,000+
# context switches/s); with one arena the thread allocates as a main thread does
# (bench/bench_trials.py: Tune's fit / the floor's fit per trial, 1.09-1.52 -> 0.99-1.09).
WORKER_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1"}


def worker_malloc_env() -> dict[str, str]:
    """:data:`WORKER_MALLOC_ENV`, except where this process's environment sets the variable (a user's choice wins)."""
    return {name: os.environ.get(name, value) for name, value in WORKER_MALLOC_ENV.items()}


def lean_tune() -> None:
    """Driver-side Tune settings for recon's Tuners (``setdefault``: a user's own setting wins).

    Tune's automatic CSV, JSON and TensorBoard logger callbacks write every reported result of every
    trial to files under the Tune run folder, on the driver's event loop, between handing workers their
    next trial. recon keeps every metric in MLflow and its results in storage and reads only Tune's
    in-memory results, so those files are work nobody reads.
    """
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Ctrl-C: Tune's own handler turns the first SIGINT into a graceful stop (a last experiment checkpoint, then
    # fit returns and the driver would go on to log and tabulate). recon resumes from storage and MLflow, not
    # from Tune's checkpoint, so the interrupt is raised at once and the driver stops within seconds.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


def quiet_workers() -> None:
    """Ray worker set-up hook.

    Without the dashboard, Ray Train's placement-group cleaner cannot reach the state API and warns
    every few seconds for the whole run (its errors stay visible); transformers draws a
    weight-loading progress bar in every trial and prints its load report (recon's encoder loader
    logs the newly initialised weights itself, in one line).
    """
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    warm_imports()


WARM_MODULES = ("torch", "transformers.models.bert.modeling_bert", "transformers.models.auto.tokenization_auto")


def warm_imports() -> None:
    """Import what every trial and training worker needs while the worker process starts.

    Ray starts a local cluster's worker processes at ``ray.init`` (one per CPU) and hands them to Tune's trial
    actors later, so these imports (about 3 s on one core) run while the driver publishes data or pre-trains,
    not at the start of each worker's first trial. A worker that only runs small tasks pays them once too.
    ``RECON_WARM_WORKERS=0`` turns it off."""
    if os.environ.get("RECON_WARM_WORKERS", "1") == "0":
        return
    import importlib

    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - dependencies of recon itself
            pass
