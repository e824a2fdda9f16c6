"""A study's pre-training stages: run each once, in storage, and hand trials a published encoder.

A stage lives at ``<storage>/pretrain/<stage>-<stage hash>/``; its hash covers the resolved
``PretrainConfig`` and the corpus content, so any change runs a new stage and an unchanged one is
reused. When it finishes, ``stage.json`` there records the final encoder's storage URI and digest;
trials fetch it once per node (verified) instead of reading a path on the driver's disk. A stage
interrupted by a killed driver resumes from its newest checkpoint in storage.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from recon.core.errors import ReconError
from recon.models.pretrain.config import DEMO_CORPUS, PretrainConfig

from recon.orchestration.study.spec import StudySpec
from recon.core.storage import Storage, is_uri

STAGE_FILE = "stage.json"


from recon.core.console import say  # noqa: E402  (default progress output; pickled by reference)


def data_root(configured: Optional[Path]) -> Optional[str]:
    """The data directory as the driver resolves it (absolute), or None when there is none: ``configured``
    (a spec's ``data_dir``, already resolved against the spec's folder), else the usual places."""
    from recon.data_prep.datadir import existing_data_root

    root = existing_data_root(configured)
    return str(root) if root else None


def study_data_dir(spec: StudySpec) -> Optional[str]:
    """The study's data directory (:func:`data_root` of its ``data.data_dir``)."""
    return data_root(spec.resolve_path(spec.data.data_dir) if spec.data.data_dir else None)


def corpus_dir(spec: StudySpec, stage: PretrainConfig, storage: Storage, log: Callable[[str], None] = say) -> str:
    """A study stage's corpus directory: the stage's own, or the demo corpus (:func:`demo_corpus`)."""
    if stage.corpus != DEMO_CORPUS:
        return str(spec.resolve_path(stage.corpus))
    return demo_corpus(storage, spec.evaluated_datasets(), study_data_dir(spec), log)


def demo_corpus_dir(storage: Storage, evaluated: list[str]) -> Path:
    """Where the ``@demo`` corpus without the entity pairs of ``evaluated`` lives in a path storage.

    The anchored variant, without the entity pairs of every dataset the study evaluates on. The demo
    corpus IS Wiki80 dev + FewRel val text, so for a study evaluated on those it comes out nearly empty
    (and CP says so): it suits SemEval/ChemProt studies.
    """
    return Path(storage.path("corpus-demo")) / ("with_anchors_excluding_" + "_".join(evaluated))


def demo_corpus(storage: Storage, evaluated: list[str], data_dir: Optional[str],
                log: Callable[[str], None] = say) -> str:
    """The ``@demo`` corpus without the entity pairs of ``evaluated``, built from local benchmarks once.

    It is built beside the storage when that is a path (local or NFS), so the Ray Data tasks that write
    its shards write where every node can read; a URI storage needs a corpus built beforehand
    (``recon corpus build --out``) and named in the stage.
    """
    if is_uri(storage.uri):
        raise ReconError(f"storage {storage.uri}: the @demo corpus is built on a shared path; build a corpus with "
                         "`recon corpus build` and name it in the stage's 'corpus'")
    directory = demo_corpus_dir(storage, evaluated)
    out, variant = directory.parent, directory.name
    if not (directory / "manifest.json").is_file():
        from recon.data_prep.corpus.demo_from_benchmarks import run_demo

        log(f"pretrain: building the demo corpus (FewRel val_wiki + Wiki80 dev as raw text, without the "
            f"entity pairs of {', '.join(evaluated)}) -> {out / variant}")
        run_demo(out, data_dir=data_dir, log=log, runs={variant: ("anchored.jsonl", tuple(evaluated))})
    return str(out / variant)


def run_pretrain_stage(spec: StudySpec, name: str, stage_uri: str, tracking_uri: str, storage: Storage,
                       log: Callable[[str], None] = say):
    """Run one stage through ``recon.orchestration.pretrain.driver.run_pretraining``; returns its final encoder.

    The stage IS a ``PretrainConfig`` (validated with the spec); the run adds where it lives and is
    tracked: the study's store and experiment (the driver writes nothing else meanwhile).
    """
    from recon.orchestration.pretrain.driver import run_pretraining
    from recon.orchestration.pretrain.mlflow_model import STAGE_HASH_TAG
    from recon.orchestration.pretrain.run import PretrainRun
    from recon.orchestration.tracking.client import SOURCE_NAME_TAG

    stage = spec.pretrain[name]
    cfg = PretrainRun(**{**stage.to_dict(), "corpus": corpus_dir(spec, stage, storage, log), "out": stage_uri,
                         "run_name": name, "tracking_uri": tracking_uri, "experiment": spec.name,
                         "evaluate_on": spec.evaluated_datasets(), "data_dir": study_data_dir(spec),
                         # An interrupted stage (driver killed) continues from its latest checkpoint.
                         "resume": Storage.from_uri(stage_uri).exists(f"{name}/config.json")})
    return run_pretraining(cfg, log=log, model_tags={"recon.study": spec.name, "recon.stage": name,
                                                     STAGE_HASH_TAG: spec.stage_hash(name),
                                                     SOURCE_NAME_TAG: f"recon study {spec.name}"})


def ensure_pretrained(spec: StudySpec, stages: Sequence[str], tracking_uri: str, storage: Storage,
                      log: Callable[[str], None] = say) -> dict[str, dict]:
    """``@pretrain.<stage>`` -> ``{"uri", "digest"}`` of its final encoder, running what is not done."""
    out: dict[str, dict] = {}
    for name in stages:
        stage, stage_hash = spec.pretrain[name], spec.stage_hash(name)
        rel = f"pretrain/{name}-{stage_hash}"
        if storage.exists(f"{rel}/{STAGE_FILE}"):
            record = storage.read_json(f"{rel}/{STAGE_FILE}")
            log(f"pretrain {name}: reusing {record['uri']}")
        else:
            log(f"pretrain {name}: {stage.objective}, {stage.steps} steps -> {storage.join(rel)}")
            start = time.time()
            final = run_pretrain_stage(spec, name, storage.join(rel), tracking_uri, storage, log)
            record = {"uri": final.uri, "digest": final.digest, "stage_hash": stage_hash,
                      "seconds": round(time.time() - start, 1)}
            if getattr(final, "model_id", None):  # the stage's MLflow model (fine-tuning runs link to it)
                record["model_id"] = final.model_id
            held = getattr(final, "heldout", None) or {}
            if held:  # does the stage learn: held-out contrastive accuracy vs chance, kept for the findings
                record["heldout"] = held
            storage.write_json(f"{rel}/{STAGE_FILE}", record)
            log(f"pretrain {name}: done in {record['seconds']:.0f} s -> {final.uri}"
                + (f"; held-out contrastive accuracy {held.get('heldout_contrastive_accuracy', float('nan')):.3f} "
                   f"vs chance {held.get('heldout_chance_accuracy', float('nan')):.3f}" if held else ""))
        out[f"@pretrain.{name}"] = {"uri": record["uri"], "digest": record["digest"]}
    return out


__all__ = ["ensure_pretrained", "run_pretrain_stage", "corpus_dir", "demo_corpus", "data_root", "study_data_dir",
           "STAGE_FILE", "say", "demo_corpus_dir"]
