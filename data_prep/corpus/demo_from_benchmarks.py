"""Show the corpus builder on real text: rebuild FewRel val_wiki + Wiki80 dev from their raw sentences.

    recon corpus demo --out runs/corpus-demo

The annotations are removed (tokens detokenised into plain text), a KG is made of their
(head Qid, relation PID, tail Qid) annotations (Wiki80 relation names -> PIDs through
fewrel/pid2name.json), an alias table of their mention texts, and the builder runs twice:
without anchors (plain-text lines: spaCy NER + alias matching only) and with anchors for a seeded
share of the mentions (JSON lines with character anchors). Both are scored against the original
annotations as precision/recall over (sentence, head id, tail id, relation). A third build with
``--exclude wiki80 fewrel`` checks that test-set exclusion removes what it should.
Sentences are subsampled per relation (``per_relation``) to keep the run short on 2 cores.
The settings are :class:`~recon.data_prep.corpus.config.CorpusDemoConfig` (sharding and execution
of each build under its ``build``); both command lines above are generated from it.
"""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from recon.core.errors import DataError, ReconError
from recon.data_prep.corpus.config import CorpusDemoConfig

NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", ")", "]", "}", "%", "'s", "n't", "'", "''", "-"}
NO_SPACE_AFTER = {"(", "[", "{", "$", "``", "-"}


def detokenise(tokens: list[str]) -> tuple[str, list[tuple[int, int] | None]]:
    """Plain text from tokens and each token's character span (None for white-space tokens)."""
    text, spans, previous = "", [], None
    for token in tokens:
        if not token.strip():
            spans.append(None)
            continue
        token = token.strip()
        if text and token not in NO_SPACE_BEFORE and previous not in NO_SPACE_AFTER:
            text += " "
        spans.append((len(text), len(text) + len(token)))
        text += token
        previous = token
    return text, spans


def _name_to_pid(pid2name: Path) -> dict[str, str]:
    table = json.loads(pid2name.read_text(encoding="utf-8"))
    return {names[0]: pid for pid, names in table.items()}


def collect(data_dir: str | None, per_relation: int, seed: int) -> tuple[list[dict], list[tuple], dict]:
    """Sentences (deduplicated by tokens) with their gold annotations, all KG triples, alias names."""
    from recon.data_prep.datadir import resolve_dataset_dir
    from recon.data_prep.registry import load_dataset

    fewrel = load_dataset("fewrel", data_dir=data_dir)
    wiki80 = load_dataset("wiki80", data_dir=data_dir)
    pid_of = _name_to_pid(resolve_dataset_dir("fewrel", "fewrel", data_dir) / "pid2name.json")
    rng = np.random.default_rng(seed)
    triples, aliases = set(), defaultdict(set)
    sentences: dict[tuple[str, ...], dict] = {}
    for name, examples in (("fewrel", fewrel.splits["val"]), ("wiki80", wiki80.splits["dev"])):
        by_relation = defaultdict(list)
        for ex in examples:
            pid = ex.label if name == "fewrel" else pid_of.get(ex.label)
            if pid is None:
                raise DataError(f"relation {ex.label!r} has no PID in pid2name.json", record=ex.source,
                                field="relation")
            triples.add((ex.head.kb_id, pid, ex.tail.kb_id))
            for ent in (ex.head, ex.tail):
                aliases[ent.kb_id].add(" ".join(t for t in ex.tokens[ent.start:ent.end] if t.strip()))
            by_relation[pid].append(ex)
        for pid, group in sorted(by_relation.items()):
            keep = group if per_relation <= 0 or len(group) <= per_relation else \
                [group[i] for i in sorted(rng.choice(len(group), per_relation, replace=False))]
            for ex in keep:
                entry = sentences.setdefault(tuple(ex.tokens), {"tokens": list(ex.tokens), "gold": [],
                                                                "datasets": set()})
                entry["gold"].append((ex.head, ex.tail, pid))
                entry["datasets"].add(name)
    alias_rows = {k: sorted(v) for k, v in aliases.items()}
    return list(sentences.values()), sorted(triples), alias_rows


def write_inputs(out: Path, sentences: list[dict], triples: list[tuple], aliases: dict,
                 anchor_share: float, seed: int) -> dict:
    """The three input files of one demo: plain text, text + anchors, KG triples, alias table."""
    rng = np.random.default_rng(seed + 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kg.tsv").write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in triples), encoding="utf-8")
    (out / "aliases.tsv").write_text("".join(f"{e}\t" + "\t".join(n) + "\n" for e, n in sorted(aliases.items())),
                                     encoding="utf-8")
    anchors_given = 0
    with (out / "plain.txt").open("w", encoding="utf-8") as plain, \
            (out / "anchored.jsonl").open("w", encoding="utf-8") as anchored:
        for entry in sentences:
            text, spans = detokenise(entry["tokens"])
            entry["text"] = text
            plain.write(text + "\n")
            anchors, seen = [], set()
            for head, tail, _ in entry["gold"]:
                for ent in (head, tail):
                    key = (ent.start, ent.end, ent.kb_id)
                    if key in seen:
                        continue
                    seen.add(key)
                    covered = [s for s in spans[ent.start:ent.end] if s is not None]
                    if covered and rng.random() < anchor_share:
                        anchors.append({"start": covered[0][0], "end": covered[-1][1], "entity": ent.kb_id})
            anchors_given += len(anchors)
            anchored.write(json.dumps({"text": text, "anchors": anchors}) + "\n")
    return {"sentences": len(sentences), "triples": len(triples), "entities": len(aliases),
            "anchors_given": anchors_given}


def score(corpus_dir: Path, sentences: list[dict], input_name: str) -> dict:
    """Precision/recall of the built corpus over (sentence, head id, tail id, relation)."""
    from recon.data_prep.corpus import load_corpus

    gold = {(i, h.kb_id, t.kb_id, pid) for i, s in enumerate(sentences) for h, t, pid in s["gold"]}
    gold_pairs = {(i, h, t) for i, h, t, _ in gold}
    index = load_corpus(corpus_dir)
    predicted, kinds = set(), Counter()
    for ex in index.examples:
        line = int(ex.sentence_id.rsplit(":", 1)[1])
        predicted.add((line - 1, ex.head.id, ex.tail.id, ex.relation))
    for i, h, t, r in predicted - gold:
        kinds["annotated_pair_other_relation" if (i, h, t) in gold_pairs else
              "reversed_annotated_pair" if (i, t, h) in gold_pairs else "unannotated_pair"] += 1
    hit = predicted & gold
    recall_by = {}
    for name in ("fewrel", "wiki80"):
        g = {x for x in gold if name in sentences[x[0]]["datasets"]}
        recall_by[name] = round(len(g & predicted) / len(g), 4) if g else None
    return {"input": input_name, "gold": len(gold), "predicted": len(predicted), "correct": len(hit),
            "precision": round(len(hit) / len(predicted), 4) if predicted else 0.0,
            "recall": round(len(hit) / len(gold), 4) if gold else 0.0,
            "recall_by_dataset": recall_by, "false_positives": dict(kinds)}


# name -> (input text file, datasets whose dev/test entity pairs are excluded)
DEMO_RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "without_anchors": ("plain.txt", ()),
    "with_anchors": ("anchored.jsonl", ()),
    "without_anchors_excluding_wiki80_fewrel": ("plain.txt", ("wiki80", "fewrel")),
}


def run_demo(out: str | Path | None = None, *, config: CorpusDemoConfig | None = None, log=print,
             runs: dict[str, tuple[str, tuple[str, ...]]] = DEMO_RUNS, **changes) -> dict:
    """Collect, write the inputs, build one corpus per entry of ``runs``, score each; returns the report.

    Settings come from ``config`` (default :class:`CorpusDemoConfig`), with ``out`` and any other
    field given as a keyword (``data_dir=``, ``per_relation=`` ...) replacing its value.
    """
    import ray

    from recon.core.ray_session import ensure_ray
    from recon.data_prep.corpus.builder import build_corpus

    if out is not None:
        changes["out"] = str(out)
    cfg = (config or CorpusDemoConfig()).replace(**changes)
    if not cfg.out:
        raise ReconError("give --out DIR: where the demo writes its inputs, corpora and report")
    out, data_dir, per_relation, anchor_share, seed = (Path(cfg.out), cfg.data_dir, cfg.per_relation,
                                                       cfg.anchor_share, cfg.seed)
    t0 = time.time()
    sentences, triples, aliases = collect(data_dir, per_relation, seed)
    inputs = write_inputs(out, sentences, triples, aliases, anchor_share, seed)
    log(f"demo input: {inputs['sentences']} sentences ({per_relation or 'all'} per relation and dataset), "
        f"{inputs['triples']} triples, {inputs['entities']} entities, {inputs['anchors_given']} anchors "
        f"in the anchored run")
    report = {"inputs": inputs, "per_relation": per_relation, "anchor_share": anchor_share, "seed": seed,
              "runs": {}}
    started = ensure_ray(num_cpus=cfg.build.num_cpus, log_to_driver=False)  # num_cpus None: all local CPUs
    try:
        for name, (text, exclude) in runs.items():
            t = time.time()
            log(f"--- {name}")
            manifest = build_corpus(cfg.build.replace(
                text=str(out / text), triples=str(out / "kg.tsv"), aliases=str(out / "aliases.tsv"),
                wikidata_dump=None, out=str(out / name), exclude=tuple(exclude), data_dir=data_dir,
                overwrite=True,
            ), log=log)
            result = score(out / name, sentences, text)
            result["seconds"] = round(time.time() - t, 1)
            result["linking_sources"] = manifest["linking_sources"]
            result["counts"] = manifest["counts"]
            report["runs"][name] = result
            log(f"{name}: precision {result['precision']:.3f}, recall {result['recall']:.3f} "
                f"({result['correct']} of {result['gold']} annotations, {result['predicted']} predicted; "
                f"{result['seconds']} s)")
    finally:
        if started:
            ray.shutdown()
    report["seconds"] = round(time.time() - t0, 1)
    (out / "demo_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
