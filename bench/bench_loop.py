"""Loop overhead: ``recon.models.train.loop.fit`` against a bare PyTorch loop, side by side in one run.

    python bench/bench_loop.py                        # MiniLM, batch 16, 30 steps, 3 rounds, CPU
    python bench/bench_loop.py --steps 50 --rounds 5 --device cuda

Both loops train the same freshly seeded model (RelationClassifier over the encoder) on the same
pre-encoded SemEval C+M batches with the same optimizer (AdamW + linear warm-up/decay, grad clip;
learning rate, weight decay, warm-up share and clipping norm are ``TrainConfig``'s defaults) for the
same number of steps. ``fit`` adds what a trial needs (loss check per step, seeded
deterministic context, progress bar, history); dev/test evaluation is left out of both, since it is
work rather than overhead. A third arm runs ``fit`` with ``fused_adamw=False`` (torch's
per-parameter AdamW loop) and reports what the fused kernel saves. Rounds alternate the order of the
arms so machine load hits them alike; the reported figure is the median over rounds. Goal: overhead
below 5%.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from recon.core.defaults import DEFAULT_ENCODER, DEFAULT_SEED
from recon.models.train.config import TrainConfig

DEFAULTS = TrainConfig()  # the loop's own defaults (Appendix B), for both loops


def build(encoder: str, dataset: str, n: int, max_length: int, batch_size: int, seed: int):
    from recon.data_prep.formats import InputFormat
    from recon.data_prep.registry import load_dataset
    from recon.models.train.batching import Collator, encode_examples
    from recon.models.nets.loading import load_encoder
    from recon.models.nets.heads import RelationClassifier
    from recon.models.train.loop import make_loader
    from recon.models.nets.seed import seed_everything

    ds = load_dataset(dataset)
    bundle = load_encoder(encoder)
    data = encode_examples(ds.splits["train"][:n], InputFormat.CM, bundle.tokenizer, bundle.special,
                           max_length, ds.label2id())
    loader = make_loader(data, batch_size, shuffle=True, seed=seed, collate_fn=Collator(bundle.tokenizer.pad_token_id))
    batches = list(loader)  # identical, pre-collated batches for both loops

    def fresh_model():
        seed_everything(seed)
        return RelationClassifier(load_encoder(encoder).model, len(ds.labels))

    return fresh_model, batches


def bare_loop(model, batches, steps: int, lr: float, device: torch.device) -> float:
    """The minimal loop: forward, cross-entropy, backward, clip, AdamW, schedule. Returns seconds."""
    from transformers import get_linear_schedule_with_warmup

    model.to(device).train()
    start = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=DEFAULTS.weight_decay, eps=DEFAULTS.adam_eps,
                            fused=DEFAULTS.fused_adamw or None)  # the optimizer fit builds
    sched = get_linear_schedule_with_warmup(opt, int(DEFAULTS.warmup_ratio * steps), steps)
    for step in range(steps):
        batch = {k: v.to(device) for k, v in batches[step % len(batches)].items()}
        labels = batch.pop("labels")
        loss = torch.nn.functional.cross_entropy(model(**batch).float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), DEFAULTS.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def fit_loop(model, batches, steps: int, lr: float, device: torch.device, deterministic: bool = True,
             fused_adamw: bool = DEFAULTS.fused_adamw) -> float:
    from recon.models.train.loop import ClassificationTask, fit

    train = [batches[i % len(batches)] for i in range(steps)]
    cfg = DEFAULTS.replace(lr=lr, epochs=1, device=str(device), progress=True, metric="micro_f1",
                           deterministic=deterministic, fused_adamw=fused_adamw)
    start = time.perf_counter()
    fit(model, ClassificationTask(), train, None, None, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--dataset", default="semeval")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-deterministic", action="store_true",
                        help="run fit without torch.use_deterministic_algorithms (to measure its cost)")
    args = parser.parse_args()
    from recon.models.train.loop import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    fresh_model, batches = build(args.encoder, args.dataset, args.batch_size * args.steps, args.max_length,
                                 args.batch_size, seed=DEFAULT_SEED)
    bare_loop(fresh_model(), batches, 3, DEFAULTS.lr, device)  # warm-up: allocator, kernels, caches
    times: dict[str, list[float]] = {"bare": [], "fit": [], "fit_loop_adamw": []}
    deterministic = not args.no_deterministic

    def fit_fn(model, data, steps, lr, dev):
        return fit_loop(model, data, steps, lr, dev, deterministic)

    def fit_unfused(model, data, steps, lr, dev):  # the same fit with torch's per-parameter AdamW
        return fit_loop(model, data, steps, lr, dev, deterministic, fused_adamw=False)

    arms = [("bare", bare_loop), ("fit", fit_fn), ("fit_loop_adamw", fit_unfused)]
    for r in range(args.rounds):
        order = arms if r % 2 == 0 else arms[::-1]
        for name, loop in order:
            times[name].append(loop(fresh_model(), batches, args.steps, DEFAULTS.lr, device))
    examples = args.steps * args.batch_size
    bare_s, fit_s = statistics.median(times["bare"]), statistics.median(times["fit"])
    report = {
        "device": str(device), "encoder": args.encoder, "batch_size": args.batch_size, "steps": args.steps,
        "rounds": args.rounds, "threads": args.threads, "deterministic": deterministic,
        "bare_examples_per_s": round(examples / bare_s, 2), "fit_examples_per_s": round(examples / fit_s, 2),
        "fit_over_bare_time_ratio": round(fit_s / bare_s, 4), "overhead_pct": round(100 * (fit_s / bare_s - 1), 2),
        "bare_s": [round(t, 3) for t in times["bare"]], "fit_s": [round(t, 3) for t in times["fit"]],
        "fit_loop_adamw_s": [round(t, 3) for t in times["fit_loop_adamw"]],
        "fused_adamw_speedup": round(statistics.median(times["fit_loop_adamw"]) / fit_s, 4),
    }
    print(f"bare loop: {report['bare_examples_per_s']} examples/s   fit: {report['fit_examples_per_s']} examples/s   "
          f"fit/bare time ratio {report['fit_over_bare_time_ratio']} (overhead {report['overhead_pct']}%)   "
          f"fit with per-parameter AdamW / fit with fused AdamW: {report['fused_adamw_speedup']}x")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
