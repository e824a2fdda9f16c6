"""bench/gpu_check.py in its CPU tiny mode, so the GPU check never rots where no GPU is.

Two runs of the script (subprocesses, as on a GPU machine): a plain one, and one with sections forced to
fail. The FLOP formula is written out again here, from the script's docstring, and the JSON's MFU is
recomputed from it.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
SECTIONS = ("environment", "cp_pretrain", "finetune_packing")


def _run(out_dir: Path, *extra: str) -> tuple[int, dict, str]:
    out = out_dir / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300, cwd=out_dir)
    log = proc.stdout + proc.stderr
    assert out.is_file(), log
    return proc.returncode, json.loads(out.read_text()), log


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    rc, doc, log = _run(tmp_path_factory.mktemp("gpu-check"), "--simulate-oom-above-pairs", "4")
    assert rc == 0, log
    return doc


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory) -> tuple[int, dict]:
    rc, doc, _ = _run(tmp_path_factory.mktemp("gpu-check-fail"), "--fail-section", "cp_pretrain",
                      "--fail-section", "finetune_pack_2")
    return rc, doc


def cp_flops(shape: dict, sentences: float, length: float, masked: float) -> float:
    """The documented CP step formula: 6 P B L + 12 N H L^2 B + 6 K (H^2 + H V) + 6 B^2 2H."""
    h, n, i, v = shape["hidden"], shape["layers"], shape["intermediate"], shape["vocab"]
    p = n * (4 * h * h + 2 * h * i)
    return (6 * p * sentences * length + 12 * n * h * length ** 2 * sentences + 6 * masked * (h * h + h * v)
            + 6 * sentences ** 2 * 2 * h)


def finetune_flops(shape: dict, examples: int, length: int, classes: int) -> float:
    """The documented fine-tuning step formula: 6 P B L + 12 N H L^2 B + 6 B 2H C."""
    h, n, i = shape["hidden"], shape["layers"], shape["intermediate"]
    p = n * (4 * h * h + 2 * h * i)
    return 6 * p * examples * length + 12 * n * h * length ** 2 * examples + 6 * examples * 2 * h * classes


def test_every_section_runs_and_reports(tiny_run):
    import transformers

    assert tuple(tiny_run["sections"]) == SECTIONS
    assert tiny_run["failed_sections"] == []
    for name in SECTIONS:
        assert tiny_run["sections"][name]["status"] == "ok", tiny_run["sections"][name]
        assert tiny_run["sections"][name]["wall_s"] > 0
    env = tiny_run["sections"]["environment"]
    assert env["torch"] == torch.__version__ and env["transformers"] == transformers.__version__
    assert env["device"] == "cpu" and env["bf16_supported"] is True
    assert env["recon_from"] == str(ROOT)  # this checkout's models/, not another install's
    assert 0 < tiny_run["wall_s"] < 120
    assert tiny_run["settings"]["budget_s"] == 420


def test_cp_figures_and_mfu_from_the_documented_formula(tiny_run):
    cp = tiny_run["sections"]["cp_pretrain"]
    shape = cp["shape"]
    assert cp["matmul_params"] == shape["layers"] * (4 * shape["hidden"] ** 2 + 2 * shape["hidden"]
                                                     * shape["intermediate"])
    assert cp["length"] == 64 and cp["mlm"] is True and cp["fused_adamw"] is True
    assert cp["timed_steps"] >= 2 and cp["sentences_per_step"] == 2 * cp["micro_batch_pairs"]
    for key in ("sentences_per_s", "tokens_per_s", "step_s", "flops_per_step", "achieved_tflops", "mfu",
                "peak_memory_gb", "host_build_sentences_per_s", "masked_per_step"):
        assert cp[key] > 0, key
    expected = cp_flops(shape, cp["sentences_per_step"], cp["length"], cp["masked_per_step"])
    assert cp["flops_per_step"] == pytest.approx(expected, rel=1e-9)
    assert cp["flops_parts_per_step"]["total"] == pytest.approx(expected, rel=1e-9)
    assert cp["mfu"] == pytest.approx(cp["flops_per_step"] / cp["step_s"] / (cp["peak_tflops"] * 1e12), rel=1e-9)
    assert cp["peak_tflops"] == 989.0
    assert cp["sentences_per_s"] == pytest.approx(cp["sentences_per_step"] / cp["step_s"], rel=1e-6)


def test_cp_search_doubles_until_out_of_memory(tiny_run):
    cp = tiny_run["sections"]["cp_pretrain"]
    assert [(s["pairs"], s["fits"]) for s in cp["search"]] == [(2, True), (4, True), (8, False)]
    assert "OutOfMemoryError" in cp["search"][-1]["error"]
    assert cp["micro_batch_pairs"] == 4  # the largest that fit


def test_packing_one_and_two_trials(tiny_run):
    ft = tiny_run["sections"]["finetune_packing"]
    assert set(ft["packs"]) == {"1", "2"} and ft["failed_packs"] == []
    per_step = finetune_flops(ft["shape"], ft["batch_size"], ft["length"], ft["classes"])
    assert ft["flops_per_step"] == pytest.approx(per_step, rel=1e-9)
    for n in (1, 2):
        pack = ft["packs"][str(n)]
        assert pack["status"] == "ok" and pack["trials"] == n
        assert len(pack["examples_per_s_per_trial"]) == n and all(x > 0 for x in pack["examples_per_s_per_trial"])
        assert pack["examples_per_s_total"] == pytest.approx(sum(pack["examples_per_s_per_trial"]))
        assert len(pack["peak_memory_gb_per_trial"]) == n and all(x > 0 for x in pack["peak_memory_gb_per_trial"])
        assert pack["steps_per_trial"] == [3] * n  # tiny mode: 3 timed steps per trial
        step_s = ft["batch_size"] / pack["examples_per_s_total"]
        assert pack["mfu_total"] == pytest.approx(per_step / step_s / (ft["peak_tflops"] * 1e12), rel=1e-9)
    assert ft["best_pack"] in ("1", "2")


def test_paper_cp_run_arithmetic(tiny_run):
    run = tiny_run["summary"]["paper_cp_run"]
    bert_base = {"hidden": 768, "layers": 12, "intermediate": 3072, "vocab": 30522}
    per_step = cp_flops(bert_base, 4096, 64, run["masked_fraction"] * 4096 * 64)
    assert run["flops_per_step"] == pytest.approx(per_step, rel=1e-9)
    minutes = 3500 * per_step / (0.45 * 989e12) / 60
    assert run["minutes_at_target_mfu"] == pytest.approx(minutes, rel=1e-9)
    assert 17 < minutes < 20  # about 18.5 min at 45% MFU on an H100 SXM
    assert run["mfu_needed_for_26_minutes"] == pytest.approx(3500 * per_step / (26 * 60) / 989e12, rel=1e-9)
    assert run["minutes_at_measured_rate"] is None  # the tiny model is not BERT-base


def test_a_failing_section_is_recorded_and_the_others_still_run(failing_run):
    rc, doc = failing_run
    assert rc == 1
    assert tuple(doc["sections"]) == SECTIONS
    cp = doc["sections"]["cp_pretrain"]
    assert cp["status"] == "failed" and "forced failure (--fail-section cp_pretrain)" in cp["error"]
    assert "RuntimeError" in cp["traceback"]
    assert doc["sections"]["environment"]["status"] == "ok"
    ft = doc["sections"]["finetune_packing"]
    assert ft["status"] == "ok"  # ran after the failed section, with the encoder the failed one never built
    one, two = ft["packs"]["1"], ft["packs"]["2"]
    assert one["status"] == "ok" and one["examples_per_s_total"] > 0
    assert two["status"] == "failed" and "forced failure (--fail-section finetune_pack_2)" in two["errors"]["0"]
    assert set(two["errors"]) == {"0", "1"} and "BrokenBarrierError" in two["errors"]["1"]  # the other left
    assert ft["failed_packs"] == ["2"]
    assert doc["failed_sections"] == ["cp_pretrain", "finetune_packing (packs 2)"]
    assert doc["summary"]["cp_mfu"] is None and doc["summary"]["paper_cp_run"]["minutes_at_target_mfu"] > 0
    assert doc["wall_s"] is not None


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module, for its pure functions and an in-process CP section."""
    spec = importlib.util.spec_from_file_location("gpu_check_module", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_pack_figures_count_only_the_common_window(gpu_check):
    # trial A: 1 step/s from t=0 to 10; trial B: 2 steps/s from t=2 to 8: both run over [2, 8]
    a = {"start": 0.0, "end": 10.0, "stamps": [(float(t), t) for t in range(11)], "steps": 10}
    b = {"start": 2.0, "end": 8.0, "stamps": [(2.0 + t / 2, t) for t in range(13)], "steps": 12}
    for r in (a, b):
        r.update(peak_memory_gb=1.0, peak_reserved_gb=None, peak_memory_kind="x", ready_s=1.0)
    figures = gpu_check.pack_figures([a, b], batch_size=64, flops_per_step=1e12, peak_tflops=100.0)
    assert figures["common_window_s"] == pytest.approx(6.0)
    assert figures["examples_per_s_per_trial"] == pytest.approx([64.0, 128.0])
    assert figures["examples_per_s_total"] == pytest.approx(192.0)
    assert figures["examples_per_s_own_window"] == pytest.approx([64.0, 128.0])
    assert figures["mfu_total"] == pytest.approx(3 * 1e12 / 100e12)


def test_out_of_memory_errors_are_recognised(gpu_check):
    assert gpu_check.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert gpu_check.is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not gpu_check.is_out_of_memory(RuntimeError("shape mismatch"))


def test_timed_steps_halve_the_micro_batch_after_out_of_memory(gpu_check, tmp_path, monkeypatch):
    """The size the search found can still run out of memory when timed (a fragmented cache): the section
    halves it and times that, instead of losing the CP figures. With the fixture vocabulary, as on a GPU
    machine without the MiniLM package."""
    real = gpu_check.CPBench.time_steps
    calls = []

    def time_steps(self, batches, warmup, timed):
        calls.append(batches[0].n_pairs)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("simulated fragmentation")
        return real(self, batches, warmup, timed)

    monkeypatch.setattr(gpu_check.CPBench, "time_steps", time_steps)
    monkeypatch.setattr(gpu_check, "vocab_file", lambda: (gpu_check.TINY_VOCAB, "fixture"))
    args = gpu_check.parse_args(["--device", "cpu", "--tiny", "--cp-max-pairs", "4"])
    clock = gpu_check.Clock(60)
    encoder = gpu_check.random_encoder_dir(gpu_check.SHAPES["tiny"], tmp_path)
    out = gpu_check.cp_section(args, clock, lambda: encoder)
    assert calls == [4, 2]
    assert out["timed_retries"] == [{"pairs": 4, "error": "OutOfMemoryError: simulated fragmentation"}]
    assert out["micro_batch_pairs"] == 2 and out["sentences_per_step"] == 4 and out["mfu"] > 0
    assert out["length"] == 64  # 64 fixture words still fill every sentence
