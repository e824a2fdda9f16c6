"""Human-readable corpus summary (``recon corpus stats DIR``, also printed after a build)."""
from __future__ import annotations

import statistics


def summarise(manifest: dict) -> dict:
    """The figures the paper reports for its corpus (relations, sentences) plus linking/drop counts."""
    per_relation = manifest.get("relations", {})
    sizes = sorted(per_relation.values())
    counts = manifest.get("counts", {})
    return {
        "relations": len(per_relation),
        "examples": int(counts.get("examples", sum(sizes))),
        "input_sentences": int(counts.get("sentences", 0)),
        "sentences_with_examples": int(counts.get("sentences_with_examples", 0)),
        "per_relation_min": sizes[0] if sizes else 0,
        "per_relation_median": statistics.median(sizes) if sizes else 0,
        "per_relation_max": sizes[-1] if sizes else 0,
        "mentions": {"anchor": int(counts.get("mentions_anchor", 0)),
                     "ner_alias": int(counts.get("mentions_ner_alias", 0))},
        "examples_by_source": {k[len("examples_"):]: int(v) for k, v in counts.items()
                               if k.startswith("examples_")},
        "excluded_sentences": int(counts.get("excluded_sentences", 0)),
        "excluded_examples": int(counts.get("excluded_examples", 0)),
        "dropped": manifest.get("dropped", {}),
        "shards": len(manifest.get("shards", [])),
    }


def format_report(manifest: dict) -> str:
    s = summarise(manifest)
    lines = [
        f"corpus {manifest.get('config_hash', '?')}: {s['relations']} relations, {s['examples']} examples "
        f"from {s['sentences_with_examples']} of {s['input_sentences']} input sentences, {s['shards']} shards",
        f"examples per relation: min {s['per_relation_min']}, median {s['per_relation_median']}, "
        f"max {s['per_relation_max']}",
        f"linked mentions: anchor {s['mentions']['anchor']}, NER+alias {s['mentions']['ner_alias']}; "
        "examples by (head, tail) source: "
        + ", ".join(f"{k} {v}" for k, v in sorted(s["examples_by_source"].items())),
        f"excluded (test/dev entity pairs): {s['excluded_sentences']} sentences, "
        f"{s['excluded_examples']} examples",
        "dropped: " + (", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items())) or "none"),
    ]
    excluded = (manifest.get("exclusion") or {}).get("datasets") or {}
    if not excluded:
        lines.append("excluded datasets: NONE - a study evaluating on any benchmark refuses to pre-train on "
                     "this corpus unless it allows leakage (rebuild with --exclude DATASET ...)")
    for name, info in excluded.items():
        missing = f"; not available locally: {', '.join(info['missing_splits'])}" if info.get("missing_splits") else ""
        digests = info.get("sha256") or {}
        files = (" [" + ", ".join(f"{s} sha256 {d[:12]}" for s, d in digests.items()) + "]") if digests else ""
        lines.append(f"  excluded pairs from {name} {'+'.join(info['splits'])}: "
                     f"{info['id_pairs']} id pairs, {info['name_pairs']} name pairs{missing}{files}")
    return "\n".join(lines)
