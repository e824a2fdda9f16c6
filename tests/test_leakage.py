"""Leakage guard, data side: exclusion records in the corpus manifest, their check, content identity."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recon.data_prep.corpus import (LeakageError, check_exclusions, corpus_identity, load_corpus,
                                    read_manifest, require_exclusions)
from recon.data_prep.corpus.exclusion import exclusion_from_datasets
from recon.data_prep.corpus.index import CorpusExample, Mention, pair_key
from recon.data_prep.corpus.kg import normalise_name
from recon.data_prep.corpus.manifest import config_hash, write_manifest
from recon.core.errors import DataError, ReconError
from recon.core.hashing import file_sha256

FIX = Path(__file__).parent / "fixtures" / "corpus"
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


def _semeval_record(splits=("dev", "test"), sha=True) -> dict:
    record = {"splits": list(splits), "missing_splits": [], "examples": 0, "id_pairs": 0, "name_pairs": 0,
              "files": {s: str(DATA / "semeval" / f"{s}.txt") for s in splits}}
    if sha:
        record["sha256"] = {s: file_sha256(DATA / "semeval" / f"{s}.txt") for s in splits}
    return record


def _example(uid: str, head: str, tail: str, relation: str = "P1", shard: int = 0) -> CorpusExample:
    return CorpusExample(uid, f"s:{uid}", (head, "and", tail), relation, Mention(head, head, 0, 1, "anchor"),
                         Mention(tail, tail, 2, 3, "anchor"), shard)


def _write_corpus(directory: Path, rows_per_file: list[list[CorpusExample]], *, exclusion=None,
                  settings: dict | None = None) -> Path:
    """A hand-made corpus (one shard, any number of files), written like the builder writes one."""
    shard = directory / "shard-00000"
    shard.mkdir(parents=True)
    files = []
    for k, rows in enumerate(rows_per_file):
        path = shard / f"part-{k}.json"
        path.write_text("".join(json.dumps(e.to_row()) + "\n" for e in rows), encoding="utf-8")
        files.append(str(path.relative_to(directory)))
    settings = settings or {"format": "jsonl", "shards": 1}
    manifest = {"version": 1, "format": "jsonl", "num_shards": 1, "config": settings,
                "config_hash": config_hash(settings),
                "shards": [{"id": 0, "files": files, "examples": sum(map(len, rows_per_file))}]}
    if exclusion is not None:
        manifest["exclusion"] = exclusion
    write_manifest(directory, manifest)
    return directory


# ---------------------------------------------------------------- check_exclusions (manifests only)

def test_manifest_without_exclusion_record_excludes_nothing_and_is_refused(tmp_path):
    corpus = _write_corpus(tmp_path / "c", [[_example("1", "Q1", "Q2")]])
    check = check_exclusions(corpus, ["semeval", "wiki80"])
    assert not check.ok and check.missing == ("semeval", "wiki80") and check.not_excluded == ["semeval", "wiki80"]
    with pytest.raises(LeakageError) as err:
        require_exclusions(corpus, ["semeval", "wiki80"])
    message = str(err.value)
    assert isinstance(err.value, ReconError) and err.value.missing == ["semeval", "wiki80"]
    assert str(corpus) in message and "semeval, wiki80" in message
    assert "recon corpus build ... --exclude semeval wiki80" in message
    assert "allow_leakage: true" in message and "--allow-leakage" in message
    # allowed leakage: no error, the check still says what leaks (for the tag / tables)
    allowed = require_exclusions(corpus, ["semeval"], allow_leakage=True)
    assert not allowed.ok and allowed.not_excluded == ["semeval"]
    assert check_exclusions(corpus, []).ok  # a study evaluating on nothing needs no exclusion


def test_recorded_exclusion_passes_and_only_the_unrecorded_dataset_is_reported(tmp_path):
    corpus = _write_corpus(tmp_path / "c", [[_example("1", "Q1", "Q2")]],
                           exclusion={"pairs": "unordered", "datasets": {"semeval": _semeval_record()}})
    assert require_exclusions(corpus, ["semeval"]).ok
    check = check_exclusions(corpus, ["semeval", "wiki80"])
    assert check.missing == ("wiki80",) and not check.stale and check.recorded == ("semeval",)
    with pytest.raises(LeakageError) as err:
        check.raise_if_leaky()
    assert "--exclude semeval wiki80" in str(err.value) and "no exclusion for wiki80" in str(err.value)


def test_exclusion_over_other_files_or_fewer_splits_is_stale(tmp_path):
    wrong = _semeval_record()
    wrong["sha256"]["test"] = "0" * 64  # excluded against another test.txt than the one evaluated now
    corpus = _write_corpus(tmp_path / "a", [[_example("1", "Q1", "Q2")]], exclusion={"datasets": {"semeval": wrong}})
    check = check_exclusions(corpus, ["semeval"])
    assert not check.ok and check.not_excluded == ["semeval"] and "test.txt" in check.stale["semeval"]
    assert "out of date" in str(check.error())
    assert check_exclusions(corpus, ["semeval"], verify_files=False).ok  # the record alone names it

    dev_only = _write_corpus(tmp_path / "b", [[_example("1", "Q1", "Q2")]],
                             exclusion={"datasets": {"semeval": _semeval_record(("dev",))}})
    assert "split test" in check_exclusions(dev_only, ["semeval"]).stale["semeval"]


def test_exclusion_record_from_before_digests_is_accepted_but_unverified(tmp_path):
    corpus = _write_corpus(tmp_path / "c", [[_example("1", "Q1", "Q2")]],
                           exclusion={"datasets": {"semeval": _semeval_record(sha=False)}})
    check = check_exclusions(corpus, ["semeval"])
    assert check.ok and check.unverified == ("semeval",)
    # a dataset that is not available locally cannot be compared either: trusted, marked unverified
    check = check_exclusions(corpus, ["semeval"], data_dir=tmp_path / "no-data")
    assert check.ok and check.unverified == ("semeval",)


# ---------------------------------------------------------------- corpus_identity (hand-made corpora)

def test_identity_follows_rows_not_path_file_names_or_row_order(tmp_path):
    a, b, c = _example("1", "Q1", "Q2"), _example("2", "Q3", "Q4"), _example("3", "Q5", "Q6")
    first = corpus_identity(_write_corpus(tmp_path / "one", [[a, b, c]]))
    assert corpus_identity(_write_corpus(tmp_path / "two", [[c], [b, a]])) == first  # other files, order, path
    assert corpus_identity(_write_corpus(tmp_path / "three", [[a, b]])) != first  # a row less
    changed = _example("3", "Q5", "Q6", relation="P2")
    assert corpus_identity(_write_corpus(tmp_path / "four", [[a, b, changed]])) != first  # a row differs
    other_config = {"format": "jsonl", "shards": 1, "exclude": ["semeval"]}
    assert corpus_identity(_write_corpus(tmp_path / "five", [[a, b, c]], settings=other_config)) != first


def test_hand_made_manifest_without_config_hash_or_digests_gets_a_content_identity(tmp_path):
    fixture = Path(__file__).parent / "fixtures" / "pretrain" / "corpus"  # no config_hash, "rows" not "examples"
    identity = corpus_identity(fixture, verify=True)
    copy = tmp_path / "copy"
    shutil.copytree(fixture, copy)
    assert corpus_identity(copy) == identity
    assert check_exclusions(fixture, ["fewrel"]).missing == ("fewrel",)  # no exclusion record: excludes nothing


# ---------------------------------------------------------------- Ray Data builds of a corpus with a SemEval pair

def _eval_name_pairs(dataset: str) -> set[tuple[str, str]]:
    exclusion, _ = exclusion_from_datasets([dataset])
    return set(exclusion.name_pairs)


def _leaked_pairs(corpus: Path, pairs: set) -> set:
    """Independent scan: unordered normalised mention-name pairs of the corpus found in ``pairs``."""
    found = set()
    for ex in load_corpus(corpus).examples:
        key = pair_key(normalise_name(ex.head.name), normalise_name(ex.tail.name))
        if key in pairs:
            found.add(key)
    return found


def _build(text: Path, out: Path, exclude=(), **kw) -> dict:
    from recon.data_prep.corpus.builder import BuildConfig, build_corpus

    return build_corpus(BuildConfig(text=str(text), triples=str(FIX / "leak_triples.tsv"),
                                    aliases=str(FIX / "leak_aliases.tsv"), out=str(out), exclude=tuple(exclude),
                                    shards=2, overwrite=True, **kw), log=lambda *_: None)


@pytest.mark.slow
def test_exclusion_is_honest_recorded_checked_and_identity_follows_rebuilds(tmp_path, local_ray):
    semeval_pairs = _eval_name_pairs("semeval")
    assert ("audits", "waste") in semeval_pairs  # semeval/test.txt line 1, in the fixture's lines 1-2
    out = tmp_path / "corpus"

    # without --exclude: the SemEval pair is in the corpus (the scan below can see it), and it is refused
    leaky = _build(FIX / "leak_text.jsonl", out)
    assert _leaked_pairs(out, semeval_pairs) == {("audits", "waste")}
    assert leaky["exclusion"]["datasets"] == {} and leaky["config"]["exclude"] == []
    assert check_exclusions(out, ["semeval"]).missing == ("semeval",)
    with pytest.raises(LeakageError):
        require_exclusions(out, ["semeval"])
    leaky_id = corpus_identity(out)

    # --exclude semeval, same path: no SemEval pair left (both sentences, either order), recorded, accepted
    manifest = _build(FIX / "leak_text.jsonl", out, exclude=["semeval"])
    assert _leaked_pairs(out, semeval_pairs) == set()
    assert manifest["counts"]["excluded_sentences"] == 2 and manifest["relations"] == {"P108": 1, "P19": 2}
    record = read_manifest(out)["exclusion"]["datasets"]["semeval"]
    assert record["splits"] == ["dev", "test"] and record["missing_splits"] == []
    assert record["sha256"] == {s: file_sha256(DATA / "semeval" / f"{s}.txt") for s in ("dev", "test")}
    assert manifest["config"]["exclude_sha256"] == {"semeval": record["sha256"]}
    check = require_exclusions(out, ["semeval"])
    assert check.ok and not check.unverified
    assert check_exclusions(out, ["semeval", "wiki80"]).not_excluded == ["wiki80"]
    excluded_id = corpus_identity(out, verify=True)
    assert excluded_id != leaky_id  # rebuilt at the same path with other exclusions: another identity

    # an identical rebuild (Ray names its files anew) keeps the identity; so does another path
    _build(FIX / "leak_text.jsonl", out, exclude=["semeval"], batch_size=1)  # execution knob only
    assert corpus_identity(out) == excluded_id
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    assert corpus_identity(moved) == excluded_id
    # a manifest without shard digests (older builds): computed from the rows, same identity
    old = read_manifest(moved)
    for shard in old["shards"]:
        del shard["digest"]
    write_manifest(moved, old)
    assert corpus_identity(moved) == excluded_id

    # other inputs at the same path: another identity
    more = tmp_path / "more.jsonl"
    more.write_text((FIX / "leak_text.jsonl").read_text(encoding="utf-8")
                    + json.dumps({"tokens": ["Adams", "joined", "the", "BBC", "."],
                                  "anchors": [{"start": 0, "end": 1, "entity": "Q42"},
                                              {"start": 3, "end": 4, "entity": "Q9531"}]}) + "\n",
                    encoding="utf-8")
    _build(more, out, exclude=["semeval"])
    assert corpus_identity(out) not in (excluded_id, leaky_id)

    # a shard edited after the build no longer matches its recorded digest
    shard_file = next(out / f for s in read_manifest(out)["shards"] for f in s["files"]
                      if (out / f).stat().st_size)
    lines = shard_file.read_text(encoding="utf-8").splitlines(keepends=True)
    shard_file.write_text("".join(lines[1:]), encoding="utf-8")
    with pytest.raises(DataError, match="changed after it was built"):
        corpus_identity(out, verify=True)
