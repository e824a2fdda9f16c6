"""What test views add to a fine-tuning run: time to build each view and to score a model on it.

    python bench/bench_views.py                                  # SemEval full test, MiniLM, all four views
    python bench/bench_views.py --dataset chemprot --views swap-type onlyc --max-eval 500

The model is MiniLM with a fresh classifier head: scoring time does not depend on the weights, so no
training is needed to time it (flip shares printed here mean nothing). The original test is encoded and
scored first (what every run already pays); then each view goes through ``recon.models.train.views``
exactly as ``run_finetune --eval-views`` does: pools (the first swap view pays for them; spaCy typing is
cached on disk, so a second run shows the warm figure), building, encoding (cached per content) and
scoring. ``--cold`` points the caches at an empty folder to time a first run.

Measured on SemEval test (2,717 examples), MiniLM, CPU, torch on 2 threads, eval batch 128, on a machine
shared with other jobs (load average 16-24 on 2 cores: every figure is loaded), warm spaCy cache:

    original test   encode 1.0 s, score 93.5 s     (what every run already pays)
    swap-type       build 3.3 s (pools: typing read from cache, unseen scan), encode + score 85.3 s
    swap-unseen     build 0.5 s, encode + score 94.4 s
    swap-random     build 0.6 s, encode + score 91.4 s
    onlyc           build 0.2 s, encode + score 81.4 s
    all four        357 s

So a view costs one more test pass. A first run also types SemEval's train, dev and test with spaCy
(about 120 s loaded, 10,717 sentences), cached on disk for every later run of any trial.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="semeval")
    parser.add_argument("--views", nargs="+", default=["swap-type", "swap-unseen", "swap-random", "onlyc"])
    parser.add_argument("--max-eval", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="empty spaCy/encoding caches (times a first run)")
    args = parser.parse_args()
    if args.cold:
        os.environ["RECON_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-views-")

    import torch

    from recon.data_prep.formats import InputFormat
    from recon.data_prep.registry import load_dataset
    from recon.models.nets.heads import HeadOptions, RelationClassifier
    from recon.models.nets.loading import load_encoder
    from recon.models.train.batching import Collator, encode_examples, encoding_key
    from recon.models.train.config import TrainConfig
    from recon.models.train.finetune_data import eval_loader, subsample
    from recon.models.train.loop import ClassificationTask, evaluate
    from recon.models.train.views import evaluate_views

    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    test = subsample(ds.splits["test"], args.max_eval)
    label2id = ds.label2id()
    id2label = {i: label for label, i in label2id.items()}
    bundle = load_encoder("minilm")
    model = RelationClassifier.from_options(bundle.model, len(label2id), HeadOptions()).eval()
    config = TrainConfig(metric=ds.metric, negative_id=label2id.get(ds.negative_label))
    collate = Collator(bundle.tokenizer.pad_token_id)

    def encode(examples, fmt):
        key = encoding_key(examples, fmt, bundle.tokenizer, bundle.special, ds.max_length, label2id)
        return encode_examples(examples, fmt, bundle.tokenizer, bundle.special, ds.max_length, label2id,
                               cache_key=key), key

    start = time.perf_counter()
    data, key = encode(test, InputFormat.CM)
    loader, order = eval_loader(data, config.eval_batch_size, collate, key)
    encoded = time.perf_counter() - start
    _, pairs = evaluate(model, ClassificationTask(), loader, config)
    original = [0] * len(order)
    for index, (pred, _) in zip(order, pairs):
        original[index] = pred
    scored = time.perf_counter() - start - encoded
    print(json.dumps({"dataset": ds.name, "n_test": len(test), "original_encode_s": round(encoded, 2),
                      "original_score_s": round(scored, 2), "cold": args.cold}))
    start = time.perf_counter()
    summaries, _ = evaluate_views(args.views, ds=ds, test=test, model=model, encode=encode, fmt=InputFormat.CM,
                                  config=config, id2label=id2label, original=original, collate=collate)
    for name, s in summaries.items():
        print(json.dumps({"view": name, "build_s": s["build_s"], "encode_and_score_s": s["wall_s"],
                          "changed": s["n_changed"], "coverage": s["report"]["coverage"],
                          "skipped": s["report"]["skipped"]}))
    print(json.dumps({"views_total_s": round(time.perf_counter() - start, 2)}))


if __name__ == "__main__":
    main()
