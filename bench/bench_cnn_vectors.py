"""CNN word vectors: embedded (MiniLM input word-piece embeddings) against random initialisation.

    python bench/bench_cnn_vectors.py                          # SemEval 10% (paper file), C+M, seeds 42..46
    python bench/bench_cnn_vectors.py --epochs 30 --vectors embedded random /path/glove.6B.50d.txt

Every arm trains the same CNN (``recon.models.nets.cnn.build_cnn``) through the project's one training
loop (``recon.models.train.loop.fit``) with the paper's CNN settings -- SGD lr 0.5, batch 160, hidden
230, constant schedule, no clipping, no weight decay -- on the paper's released ``train_0.1`` file,
with the same seeds, scored on the FULL dev (best epoch) and FULL test sets (micro-F1 without
``Other``). Only the initial word-embedding matrix differs. Featurisation (spaCy tags, vocabulary
fitted on train only) is done once and shared; the arms alternate seed by seed so machine load
hits them alike.

Measured (40 epochs, CPU x2 threads shared with other jobs, so wall times are loaded; total 1307 s),
test micro-F1 per seed 42..46 and median:

    embedded (384-d, std 0.28)  0.6115 0.6078 0.5922 0.6168 0.5966  median 0.6078
    random (50-d N(0,1))        0.5075 0.3845 0.4889 0.4783 0.4167  median 0.4783
    embedded + dev/test words   0.6116 0.6335 0.6237 0.6038 0.6152  median 0.6152 (--open-vocab embedded)

Random reached its best dev at epoch 40 for three seeds; at 100 epochs seed 42 scored 0.4979 (vs
0.5075 at 40), so the gap is not a matter of too few epochs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from recon.core.defaults import DEFAULT_ENCODER, DEFAULT_SEED, PAPER_SEEDS  # noqa: E402


def prepare(data_dir: str | None, fraction: float, max_length: int):
    from recon.data_prep.cnn_features import CNNFeaturizer
    from recon.data_prep.formats import InputFormat
    from recon.data_prep.registry import load_dataset
    from recon.data_prep.special_tokens import SpecialTokens
    from recon.data_prep.splits import training_subset
    from recon.models.train.finetune import FeatureDataset

    ds = load_dataset("semeval", data_dir=data_dir)
    train = training_subset(ds, fraction, DEFAULT_SEED, source="paper")  # the released file: no seed dependence
    special = SpecialTokens.for_vocab(())  # as finetune._cnn_setup: readable marker names
    feat = CNNFeaturizer(max_length=max_length).fit(train, InputFormat.CM, special)
    label2id = ds.label2id()
    data = [FeatureDataset(feat.transform(xs), [label2id[x.label] for x in xs], [x.source for x in xs])
            for xs in (train, ds.splits["dev"], ds.splits["test"])]
    return ds, train, feat, label2id, data


def open_vocab(ds, train, feat, label2id):
    """A copy of the featurizer whose vocabulary also holds the dev/test words (no labels used)."""
    import copy

    from recon.models.train.finetune import FeatureDataset

    wide = copy.deepcopy(feat)
    added = wide.extend_vocab(wide.rendered_words([*ds.splits["dev"], *ds.splits["test"]]))
    data = [FeatureDataset(wide.transform(xs), [label2id[x.label] for x in xs], [x.source for x in xs])
            for xs in (train, ds.splits["dev"], ds.splits["test"])]
    return wide, data, added


def run_one(ds, feat, label2id, data, vectors: str, seed: int, args) -> dict:
    from recon.models.nets.cnn import build_cnn
    from recon.models.train.loop import ClassificationTask, fit, make_loader
    from recon.models.train.config import TrainConfig

    start = time.perf_counter()
    model, notes = build_cnn(feat, len(label2id), hidden_size=args.hidden, word_vectors=vectors,
                             encoder=args.encoder, seed=seed)
    train, dev, test = data
    cfg = TrainConfig(lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, optimizer="sgd",
                      schedule="constant", max_grad_norm=None, weight_decay=0.0, seed=seed, device="cpu",
                      metric=ds.metric, negative_id=label2id[ds.negative_label], progress=False)
    result = fit(model, ClassificationTask(), make_loader(train, args.batch_size, shuffle=True, seed=seed),
                 make_loader(dev, 500, shuffle=False), make_loader(test, 500, shuffle=False), cfg)
    dev_curve = [round(h["dev_score"], 4) for h in result.history]
    return {"vectors": vectors, "seed": seed, "dev": result.best_dev["score"], "test": result.test_at_best["score"],
            "best_epoch": result.best_epoch, "word_dim": model.word.embedding_dim,
            "hidden": model.conv.out_channels, "wall_s": round(time.perf_counter() - start, 1),
            "dev_curve": dev_curve, "notes": notes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="/work/shared/datasets")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--vectors", nargs="+", default=["embedded", "random"])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(PAPER_SEEDS))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=160)
    ap.add_argument("--hidden", type=int, default=230)
    ap.add_argument("--max-length", type=int, default=100)
    ap.add_argument("--encoder", default=DEFAULT_ENCODER)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--open-vocab", nargs="*", default=[], metavar="VECTORS",
                    help="extra arms whose vocabulary also holds the dev/test words (e.g. embedded)")
    ap.add_argument("--out", help="write all rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    ds, train, feat, label2id, data = prepare(args.data_dir, args.fraction, args.max_length)
    n_train, n_dev, n_test = (len(d) for d in data)
    unk_test = float((data[2].features["word_ids"] == 1).sum() / data[2].features["mask"].sum())
    print(f"semeval train@{args.fraction:g}/paper: {n_train} train, {n_dev} dev, {n_test} test (full); "
          f"vocab {len(feat.words)} words; {unk_test:.1%} of test tokens are <unk>; "
          f"prep {time.perf_counter() - t0:.0f}s", flush=True)
    print(f"settings: C+M, SGD lr {args.lr}, batch {args.batch_size}, hidden {args.hidden}, "
          f"{args.epochs} epochs, test at best dev epoch, CPU x{args.threads} threads", flush=True)
    arms = {v: (feat, data) for v in args.vectors}
    if args.open_vocab:
        wide, wide_data, added = open_vocab(ds, train, feat, label2id)
        for v in args.open_vocab:
            arms[f"{v}+evalwords"] = (wide, wide_data)
        print(f"open-vocabulary arms: {added} dev/test words added to the vocabulary "
              f"({len(wide.words)} words)", flush=True)
    rows = []
    for seed in args.seeds:
        for name, (f, d) in arms.items():
            vectors = name.split("+")[0]
            row = run_one(ds, f, label2id, d, vectors, seed, args)
            row["vectors"] = name
            rows.append(row)
            print(f"  {name:>18} seed {seed}: test micro-F1 {row['test']:.4f}  dev {row['dev']:.4f}  "
                  f"best epoch {row['best_epoch']:>3}  word dim {row['word_dim']}  {row['wall_s']:.0f}s", flush=True)
    print("\nmedians over seeds", args.seeds)
    for vectors in arms:
        mine = [r for r in rows if r["vectors"] == vectors]
        tests = [r["test"] for r in mine]
        print(f"  {vectors:>18}: test {statistics.median(tests):.4f} (min {min(tests):.4f}, max {max(tests):.4f})  "
              f"dev {statistics.median(r['dev'] for r in mine):.4f}  "
              f"best epochs {[r['best_epoch'] for r in mine]}  {mine[0]['notes'][0]}")
    print(f"total wall {time.perf_counter() - t0:.0f}s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
