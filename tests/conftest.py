"""Fixtures several test files need, built once here.

* ``tok``: the embedded MiniLM's tokenizer with recon's marker tokens and a word-piece cache (what the
  encoder sees), read once per session.
* ``one_thread``: torch on one thread in every test, as a Ray trial runs (results then do not depend on
  the machine's core count, and two test processes do not fight over cores).
* ``local_ray``: a local Ray for the tests that run Ray Data / Tune in-process (joined if one runs).
* ``pretrain_corpus``: the small built corpus under ``fixtures/pretrain/corpus``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def tok():
    from transformers import AutoTokenizer

    from recon.core.defaults import ENCODER_ALIASES
    from recon.data_prep.encoding import WordPieceCache
    from recon.data_prep.special_tokens import SpecialTokens

    tokenizer = AutoTokenizer.from_pretrained(ENCODER_ALIASES["minilm"])
    special = SpecialTokens.for_tokenizer(tokenizer)
    return tokenizer, special, WordPieceCache(tokenizer, special.all_tokens())


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def pretrain_corpus():
    from recon.data_prep.corpus import load_corpus

    return load_corpus(FIXTURES / "pretrain" / "corpus")
