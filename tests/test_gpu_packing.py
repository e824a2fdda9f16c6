"""Packed trials (``ray.gpus_per_trial`` below 1): each trial's memory estimated and checked against its share.

The estimate's sizes are read from real encoder configs (the embedded MiniLM's parameter count must match the
loaded model's exactly); the GPU's memory comes from ``nvidia-smi`` (a stand-in script on PATH here, since this
machine has no GPU) on this machine and, through a Ray task, on a cluster's GPU nodes.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from recon.models.train.memory import (BERT_BASE, GIB, EncoderShape, encoder_shape, packing_problem,
                                       pretrain_memory_bytes, training_memory_bytes)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """An ``nvidia-smi`` that reports two GPUs of 80 GiB and 40 GiB (MiB, as the real one prints)."""
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\nprintf '81920\\n40960\\n'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return 40960 << 20


def test_sizes_come_from_the_encoder_config():
    from transformers import AutoModel, BertConfig

    from recon.models.nets.loading import ENCODER_ALIASES

    shape = encoder_shape("minilm")
    model = AutoModel.from_pretrained(ENCODER_ALIASES["minilm"], add_pooling_layer=False)
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    assert (shape.hidden, shape.layers, shape.heads) == (384, 6, 12)
    assert EncoderShape.from_config(BertConfig(), "x").parameters == BERT_BASE.parameters
    assert encoder_shape("/no/such/encoder") is BERT_BASE


def test_memory_grows_with_batch_length_and_fp32():
    small = training_memory_bytes(BERT_BASE, 16, 64, bf16=True)
    assert training_memory_bytes(BERT_BASE, 32, 64, bf16=True) > small
    assert training_memory_bytes(BERT_BASE, 16, 128, bf16=True) > small
    assert training_memory_bytes(BERT_BASE, 16, 64, bf16=False) > small
    # BERT-base's states alone (16 bytes a parameter) are 1.6 GiB; with the runtime's allowance above 2.6 GiB
    assert 2.6 * GIB < small < 4 * GIB


def test_packing_problem_names_the_figures():
    need = int(6 * GIB)
    assert packing_problem(need, int(80 * GIB), 0.25, "a trial") is None        # 20 GiB each
    text = packing_problem(need, int(16 * GIB), 0.25, "a trial")                 # 4 GiB each
    assert "6.0 GiB" in text and "0.25 of a 16 GiB GPU gives it 4.0 GiB" in text
    assert "at most 2 such trials fit on one GPU (gpus_per_trial: 0.5 or more)" in text
    assert "not even one" in packing_problem(need, int(4 * GIB), 1, "a trial")


def test_gpu_memory_is_read_from_nvidia_smi(fake_gpu):
    from recon.core.hardware import gpu_memory_bytes

    assert gpu_memory_bytes() == fake_gpu  # the smaller of the two


def _study(tmp_path: Path, fraction: float, batch: int) -> Path:
    path = tmp_path / "packed.yaml"
    path.write_text(f"defaults: {ROOT / 'studies' / 'demo.yaml'}\nname: packed\n"
                    f"output_dir: {tmp_path / 'out'}\nencoder: bert-base-uncased\n"
                    f"ray: {{gpus_per_trial: {fraction}}}\ntraining: {{batch_size: {batch}}}\n")
    return path


def test_study_trials_that_do_not_fit_are_refused_with_figures(tmp_path):
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.preflight import packing_problems
    from recon.orchestration.study.spec import load_spec

    spec = load_spec(_study(tmp_path, 0.25, 16))
    trials = expand(spec)
    assert packing_problems(spec, trials, int(80 * GIB)) == []
    problems = packing_problems(spec, trials, int(8 * GIB))  # 2 GiB each: BERT-base needs more
    assert {p.what.split(" (")[0] for p in problems} == {"a trial of model MiniLM", "a trial of model MiniLM+CP"}
    assert all("batch 16, length 48" in p.what and "at most" in p.what for p in problems)
    assert "raise ray.gpus_per_trial" in problems[0].fix
    assert packing_problems(spec, trials, None) == []  # no GPU: the GPU check beside it reports that


def test_sweep_is_checked_at_the_largest_batch_its_space_reaches(tmp_path):
    from recon.orchestration.sweep.preflight import sweep_packing_problems
    from recon.orchestration.sweep.spec import load_sweep

    path = tmp_path / "sweep.yaml"
    path.write_text(f"defaults: {ROOT / 'studies' / 'sweep-paper.yaml'}\nname: packed-sweep\n"
                    "ray: {gpus_per_trial: 0.5}\n")
    spec = load_sweep(path)
    pretrain, _ = spec.resolve({"pretrain.batch_size": 2048})
    need = pretrain_memory_bytes(pretrain)[0]
    assert sweep_packing_problems(spec, 2 * need + 1) == []
    problems = sweep_packing_problems(spec, 2 * need - (1 << 20))
    assert len(problems) == 1 and "the sweep's largest trial" in problems[0].what


def test_cluster_gpu_memory_is_read_on_the_gpu_nodes(fake_gpu):
    import ray

    from recon.core.preflight import cluster_gpu_memory_bytes

    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, runtime_env={"env_vars": {"PATH": os.environ["PATH"]}})
    try:
        assert cluster_gpu_memory_bytes(timeout_s=120) == fake_gpu
    finally:
        ray.shutdown()
