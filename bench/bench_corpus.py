"""Corpus builder at growing graph sizes: the in-memory graph (dict in every linking actor) vs joins on tables.

    python bench/bench_corpus.py [--sizes 100000 400000 1600000] [--sentences 2000] [--out runs/bench-corpus]

For each size N a synthetic graph is written (N entities with two aliases each, 2N statements over
FewRel PIDs) and the SAME text (``--sentences`` token lines with anchors and alias mentions of the
first 2,000 entities) is built twice, each in a fresh process and a fresh local Ray (2 CPUs):

- ``memory``: ``recon corpus build --triples --aliases --linking memory`` (today's builder);
- ``join``: ``recon kg build`` (timed apart: done once per graph) then ``recon corpus build --kg
  --linking join``.

Figures per run: peak RSS (``VmHWM``) of the driver and of every Ray worker process (the linking
actors and the join tasks; the largest is "per worker"), build seconds and sentences/s. Both builds
must give the same corpus (shard digests compared). Results: ``<out>/bench_corpus.json`` and a table.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

PIDS = ("P17", "P131", "P27", "P19", "P108", "P69", "P159", "P463", "P740", "P36")


def vm_hwm_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def worker_peaks() -> list[float]:
    """VmHWM of every worker process (``ray::...``) of the Ray started by this process (under its raylet)."""
    import ray

    node = ray._private.worker._global_node  # noqa: SLF001 - a benchmark may look inside
    raylet = node.all_processes["raylet"][0].process.pid
    peaks = []
    for pid in _descendants(raylet):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read().startswith(b"ray::"):
                    peaks.append(vm_hwm_mb(pid))
        except OSError:
            continue
    return sorted(peaks, reverse=True)


def write_graph(directory: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "aliases.tsv").open("w") as aliases:
        for i in range(n):
            aliases.write(f"Q{i}\tEntity {i} Alpha\tE{i} A\n")
    with (directory / "triples.tsv").open("w") as triples:
        for i in range(n):  # the first 2,000 entities (those the text mentions) link to their next two
            for j in ((i + 1) % 2000, (i + 2) % 2000) if i < 2000 else (rng.randrange(n), rng.randrange(n)):
                triples.write(f"Q{i}\t{rng.choice(PIDS)}\tQ{j}\n")


def write_text(path: Path, sentences: int, seed: int = 1) -> None:
    """Sentences about the first 2,000 entities: two anchors and one alias mention each."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(sentences):
            a = rng.randrange(2000)
            b, c = (a + 1) % 2000, (a + 2) % 2000  # KG neighbours: a->b, a->c and b->c hold statements
            tokens = ["Entity", str(a), "Alpha", "met", "Entity", str(b), "Alpha", "near", f"E{c}", "A", "."]
            handle.write(json.dumps({"tokens": tokens, "anchors": [{"start": 0, "end": 3, "entity": f"Q{a}"},
                                                                    {"start": 4, "end": 7, "entity": f"Q{b}"}]})
                         + "\n")


def run_one(mode: str, graph: Path, text: Path, work: Path, rows_per_part: int) -> dict:
    """One build in this (fresh) process; returns its figures."""
    import ray

    from recon.data_prep.corpus.builder import BuildConfig, build_corpus
    from recon.data_prep.corpus.kg_build import KGBuildConfig, build_kg_tables

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    result: dict = {"mode": mode}
    if mode == "join":
        t = time.time()
        build_kg_tables(KGBuildConfig(triples=str(graph / "triples.tsv"), aliases=str(graph / "aliases.tsv"),
                                      out=str(work / "kg"), relations="all", rows_per_part=rows_per_part,
                                      overwrite=True), log=lambda *_: None)
        result["kg_build_s"] = round(time.time() - t, 1)
        result["kg_build_worker_peak_mb"] = round(max(worker_peaks(), default=0), 1)
        ray.shutdown()  # fresh workers for the corpus build, so their peaks are the linking's alone
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        before = vm_hwm_mb()
        config = BuildConfig(text=str(text), kg=str(work / "kg"), out=str(work / "corpus-join"), linking="join",
                             overwrite=True)
    else:
        before = vm_hwm_mb()
        config = BuildConfig(text=str(text), triples=str(graph / "triples.tsv"), aliases=str(graph / "aliases.tsv"),
                             out=str(work / "corpus-memory"), linking="memory", overwrite=True)
    t = time.time()
    manifest = build_corpus(config, log=lambda *_: None)
    seconds = time.time() - t
    peaks = worker_peaks()
    ray.shutdown()
    result.update({
        "build_s": round(seconds, 1), "sentences": manifest["counts"]["sentences"],
        "sentences_per_s": round(manifest["counts"]["sentences"] / seconds, 1),
        "examples": manifest["counts"]["examples"], "driver_peak_mb": round(vm_hwm_mb(), 1),
        "driver_peak_before_build_mb": round(before, 1),
        "worker_peak_mb": round(max(peaks, default=0), 1), "worker_peaks_mb": [round(p, 1) for p in peaks[:6]],
        "digests": [s["digest"] for s in manifest["shards"]],
    })
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--rows-per-part", type=int, default=200_000)
    parser.add_argument("--modes", nargs="+", default=["memory", "join"])
    parser.add_argument("--out", default="runs/bench-corpus")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "GRAPH", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    text = out / "text.jsonl"
    if args.one:
        mode, graph, work = args.one
        print("RESULT " + json.dumps(run_one(mode, Path(graph), text, Path(work), args.rows_per_part)), flush=True)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    write_text(text, args.sentences)
    results = []
    for n in args.sizes:
        graph = out / f"graph-{n}"
        if not (graph / "triples.tsv").is_file():
            write_graph(graph, n)
        for mode in args.modes:
            proc = subprocess.run([sys.executable, __file__, "--out", str(out), "--rows-per-part",
                                   str(args.rows_per_part), "--one", mode, str(graph), str(out / f"work-{n}")],
                                  capture_output=True, text=True, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"{mode} at {n} entities failed")
            result = {"entities": n, "aliases": 2 * n, "statements": 2 * n, **json.loads(line[7:])}
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "digests"}), flush=True)
        same = {tuple(r["digests"]) for r in results if r["entities"] == n}
        print(f"{n} entities: memory and join corpora identical: {len(same) == 1}", flush=True)
    (out / "bench_corpus.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'entities':>9} {'mode':>6} {'driver MB':>9} {'worker MB':>9} {'build s':>7} {'sent/s':>7} {'kg build s':>10}")
    for r in results:
        print(f"{r['entities']:>9} {r['mode']:>6} {r['driver_peak_mb']:>9} {r['worker_peak_mb']:>9} "
              f"{r['build_s']:>7} {r['sentences_per_s']:>7} {r.get('kg_build_s', ''):>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
