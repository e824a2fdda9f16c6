"""Long-lived trial workers: what one trial caches for the next never changes a result.

Tune reuses a worker process for trial after trial (``reuse_actors=True``); the encoder's weights and
tokenizer, parsed datasets and encoded splits stay in that process (and encoded splits on the node's
disk). These tests pin the contract: the same config and seed give bit-for-bit the same metrics and
predictions warm (second run in a process), cold in a fresh process, and after other trials; and a
trial never starts from weights another trial loaded or trained.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from recon.models.train import batching, finetune_data
from recon.models.nets import loading as encoder_mod
from recon.models.train.finetune_config import DataOptions, FinetuneConfig
from recon.models.train.finetune import run_finetune
from recon.models.train.config import TrainConfig

FIXTURE = Path(__file__).parent / "fixtures" / "training" / "keyword"
REPO = Path(__file__).resolve().parents[1]


def _tiny_bert(out: Path, seed: int) -> str:
    """A 2-layer hidden-32 BERT over the keyword fixture's vocabulary (markers get added: a resize)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    tokenizer = BertTokenizer(str(FIXTURE / "vocab.txt"))
    torch.manual_seed(seed)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=37, vocab_size=len(tokenizer), max_position_embeddings=64))
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("encoders")
    return _tiny_bert(root / "a", 0), _tiny_bert(root / "b", 1)


def cfg_for(encoder: str, seed: int = 3, fmt: str = "C+M", **training) -> FinetuneConfig:
    return FinetuneConfig(dataset=None, path=str(FIXTURE), kind="opennre", encoder=encoder, input_format=fmt,
                          data=DataOptions(max_length=32, max_eval=24),
                          training=TrainConfig(**{"epochs": 2, "batch_size": 16, "lr": 2e-3, "seed": seed,
                                                  "warmup_ratio": 0.0, **training}))


def clear_caches() -> None:
    encoder_mod.clear_encoder_cache()
    batching._CACHE.clear()
    finetune_data._DATASETS.clear()
    finetune_data._SUBSETS.clear()
    finetune_data._EVAL_BATCHES.clear()


def outcome(out_dir: Path) -> dict:
    """Everything a trial produces that must not depend on caches (its wall time aside)."""
    metrics = json.loads((out_dir / "metrics.json").read_text())
    metrics.pop("wall_s"), metrics.pop("fit_s")
    return {"metrics": metrics, "predictions": (out_dir / "predictions.jsonl").read_text()}


def run_in_process(cfg: FinetuneConfig, out_dir: Path) -> dict:
    torch.set_num_threads(1)
    run_finetune(cfg, out_dir=out_dir)
    return outcome(out_dir)


def run_fresh_process(cfg: FinetuneConfig, out_dir: Path, cache_dir: Path | None = None) -> dict:
    """The same trial cold, in a new Python process (as a fresh Ray worker would run it)."""
    code = ("import json, sys, torch; torch.set_num_threads(1); "
            "from recon.models.train.finetune import run_finetune; from recon.models.train.finetune_config import FinetuneConfig; "
            "run_finetune(FinetuneConfig.from_dict(json.loads(sys.argv[1])), out_dir=sys.argv[2])")
    env = {k: v for k, v in __import__("os").environ.items() if k != "RECON_CACHE_DIR"}
    if cache_dir is not None:
        env["RECON_CACHE_DIR"] = str(cache_dir)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(cfg)), str(out_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return outcome(out_dir)


def test_warm_rerun_equals_cold_and_fresh_process(encoders, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RECON_CACHE_DIR", raising=False)
    cfg = cfg_for(encoders[0])
    clear_caches()
    cold = run_in_process(cfg, tmp_path / "cold")
    assert encoder_mod._LOADED and batching._CACHE  # the second run finds everything cached
    warm = run_in_process(cfg, tmp_path / "warm")
    fresh = run_fresh_process(cfg, tmp_path / "fresh")
    assert warm == cold
    assert fresh == cold
    assert cold["metrics"]["history"] and len(cold["predictions"].splitlines()) == 24


def test_trial_after_other_trials_equals_alone(encoders, tmp_path: Path, monkeypatch) -> None:
    """Other seed, other format, other encoder first: the process state they leave does not leak."""
    monkeypatch.delenv("RECON_CACHE_DIR", raising=False)
    target = cfg_for(encoders[0], seed=5, fmt="OnlyC")
    alone = run_fresh_process(target, tmp_path / "alone")
    clear_caches()
    run_in_process(cfg_for(encoders[0], seed=3, fmt="C+M"), tmp_path / "before1")
    run_in_process(cfg_for(encoders[1], seed=4, fmt="OnlyC"), tmp_path / "before2")
    torch.use_deterministic_algorithms(False)
    torch.manual_seed(123)  # whatever a previous trial left in the global generators
    after = run_in_process(target, tmp_path / "after")
    assert after == alone


def test_two_encoders_in_one_process_do_not_share_weights(encoders, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RECON_CACHE_DIR", raising=False)
    a, b = encoders
    clear_caches()
    fresh_b = run_fresh_process(cfg_for(b), tmp_path / "fresh_b")
    out_a = run_in_process(cfg_for(a), tmp_path / "a")
    out_b = run_in_process(cfg_for(b), tmp_path / "b")
    assert out_b == fresh_b and out_a != out_b
    bundle_a = encoder_mod.load_encoder(a, cache=True)
    bundle_b = encoder_mod.load_encoder(b, cache=True)
    emb_a = bundle_a.model.backbone.get_input_embeddings().weight
    emb_b = bundle_b.model.backbone.get_input_embeddings().weight
    assert not torch.equal(emb_a, emb_b)
    ptrs_a = {p.data_ptr() for p in bundle_a.model.parameters()}
    assert not ptrs_a & {p.data_ptr() for p in bundle_b.model.parameters()}


def test_cached_encoder_is_a_fresh_copy_equal_to_an_uncached_load(encoders) -> None:
    """Same seed -> same weights as an uncached load (the marker rows drawn by the resize too),
    and training one copy (here: overwriting it) leaves the next copy untouched."""
    from recon.models.nets.seed import seed_everything

    a = encoders[0]
    clear_caches()
    for seed in (3, 4):
        seed_everything(seed)
        plain = encoder_mod.load_encoder(a).model.state_dict()
        for _ in range(2):  # the first fills the cache, the second is a hit
            seed_everything(seed)
            bundle = encoder_mod.load_encoder(a, cache=True)
            cached = bundle.model.state_dict()
            assert cached.keys() == plain.keys()
            assert all(torch.equal(cached[k], plain[k]) for k in plain)
            with torch.no_grad():
                for p in bundle.model.parameters():
                    p.add_(1.0)  # "training" this trial's copy
    assert len(encoder_mod._LOADED) == 1


def test_encoder_cache_follows_the_files(tmp_path: Path) -> None:
    """A directory rewritten in place (a re-run stage, a re-saved model) is read again."""
    path = _tiny_bert(tmp_path / "enc", 0)
    clear_caches()
    first = encoder_mod.load_encoder(path, cache=True).model.state_dict()
    _tiny_bert(tmp_path / "enc", 7)
    second = encoder_mod.load_encoder(path, cache=True).model.state_dict()
    key = "backbone.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(first[key], second[key])


def test_encoding_key_is_a_content_hash_and_disk_cache_round_trips(encoders, tmp_path: Path) -> None:
    from recon.data_prep.formats import InputFormat
    from recon.data_prep.registry import load_dataset

    ds = load_dataset(path=str(FIXTURE), kind="opennre")
    bundle = encoder_mod.load_encoder(encoders[0], cache=True)
    label2id = ds.label2id()
    train = ds.splits["train"]
    key = batching.encoding_key(train[:20], InputFormat.CM, bundle.tokenizer, bundle.special, 32, label2id)
    # Same length, other examples / format / length / tokenizer: other keys.
    assert key != batching.encoding_key(train[20:40], InputFormat.CM, bundle.tokenizer, bundle.special, 32, label2id)
    assert key != batching.encoding_key(train[:20], InputFormat.ONLYC, bundle.tokenizer, bundle.special, 32,
                                        label2id)
    assert key != batching.encoding_key(train[:20], InputFormat.CM, bundle.tokenizer, bundle.special, 16, label2id)
    other = encoder_mod.load_encoder(encoders[1], cache=True)  # same vocabulary and tokenizer settings
    assert key == batching.encoding_key(train[:20], InputFormat.CM, other.tokenizer, other.special, 32, label2id)
    assert key == batching.encoding_key(list(train[:20]), InputFormat.CM, bundle.tokenizer, bundle.special, 32,
                                        label2id)

    batching._CACHE.clear()
    args = (train[:20], InputFormat.CM, bundle.tokenizer, bundle.special, 32, label2id)
    first = batching.encode_examples(*args, cache_key=key, cache_dir=tmp_path)
    assert list((tmp_path / batching.DISK_SUBDIR).rglob("*.pkl"))
    batching._CACHE.clear()
    again = batching.encode_examples(*args, cache_key=key, cache_dir=tmp_path)  # from disk
    assert again is not first and again.items == first.items and again.sources == first.sources


def test_disk_cache_shared_with_a_fresh_process_gives_the_same_result(encoders, tmp_path: Path,
                                                                      monkeypatch) -> None:
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path / "cache"))
    cfg = cfg_for(encoders[0], seed=6)
    clear_caches()
    here = run_in_process(cfg, tmp_path / "here")  # writes the encoded splits
    assert len(list((tmp_path / "cache" / batching.DISK_SUBDIR).rglob("*.pkl"))) == 3
    there = run_fresh_process(cfg, tmp_path / "there", cache_dir=tmp_path / "cache")  # reads them
    assert there == here


def test_reset_process_state_restores_what_a_trial_may_change() -> None:
    import random

    from recon.orchestration.study.trainable import reset_process_state

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_grad_enabled(False)
        reset_process_state(1, seed=42)
        assert torch.get_num_threads() == 1 and torch.is_grad_enabled()
        assert not torch.are_deterministic_algorithms_enabled()
        draws = (random.random(), torch.rand(1).item())
        reset_process_state(1, seed=42)
        assert (random.random(), torch.rand(1).item()) == draws
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(True)
        torch.use_deterministic_algorithms(False)


@pytest.mark.slow
def test_study_reuses_one_worker_and_results_match_in_process(tmp_path: Path) -> None:
    """Ray Tune with reuse_actors: three trials one after another run in one worker process, and each
    result is the one the trainer gives alone in this process."""
    import shutil

    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec
    from recon.orchestration.study.trainers import TrialRequest, resolve_references, resolve_trainer
    from recon.orchestration.study.runner import run_study, study_storage

    studies = Path(__file__).parent / "fixtures" / "studies"
    shutil.copy(studies / "toy_trainer.py", tmp_path / "toy_trainer.py")
    text = (studies / "toy_study.yaml").read_text()
    text = (text.replace("formats: [C+M]", "formats: [C+M, OnlyC, OnlyM]").replace("seeds: [42, 43]", "seeds: [42]")
            .replace("max_concurrent_trials: 2", "max_concurrent_trials: 1"))
    (tmp_path / "study.yaml").write_text(text + f"output_dir: {tmp_path / 'out'}\n")
    spec = load_spec(tmp_path / "study.yaml")
    outcome = run_study(spec, log=lambda msg: None)
    assert outcome.ran == 3 and not outcome.failed
    store = study_storage(spec)
    trainer = resolve_trainer(spec.trainer, "finetune", spec.source.parent)
    pids = set()
    for trial in expand(spec):
        result = store.read_json(f"results/{trial.trial_id}/result.json")
        pids.add(result["node"]["pid"])
        alone = trainer(TrialRequest(trial, tmp_path / trial.trial_id, config=resolve_references(trial, {}, None)), [])
        assert result["test"] == alone["test"] and result["history"] == alone["history"]
    assert len(pids) == 1  # one worker process ran all three trials


def test_progress_counts_a_reused_worker_running_the_next_trial_before_the_last_is_logged() -> None:
    """Tune completes trial a and starts c on the freed worker before the writer thread has logged a:
    at most ``concurrency`` trials are running at any time, and a retried trial is not counted twice."""
    from recon.orchestration.study.progress import Progress

    lines: list[str] = []
    progress = Progress(total=3, concurrency=2, log=lines.append)
    progress.start("a")
    progress.start("b")
    progress.stop("a")         # Tune: a completed, its logging queued
    progress.start("c")        # the worker runs c at once
    assert progress.running == 2
    progress.finish("a", True)  # the writer thread logged a
    assert lines[-1].startswith("[trials] done 1/3, running 2, failed 0")
    progress.stop("b")         # b put back for a retry ...
    progress.start("b")        # ... and started again
    assert progress.running == 2
    progress.finish("b", False)
    progress.finish("c", True)
    assert lines[-1].startswith("[trials] done 2/3, running 0, failed 1") and progress.running == 0
