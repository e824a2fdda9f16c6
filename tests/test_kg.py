"""The knowledge graph as partitioned tables (``recon kg build``) and linking as Ray Data joins."""
from __future__ import annotations

import bz2
import json
import shutil
from pathlib import Path

import pytest

from recon.data_prep.corpus.kg import KnowledgeGraph, normalise_title
from recon.data_prep.corpus.kg_build import KGBuildConfig, build_kg_tables, parse_chunk
from recon.data_prep.corpus.kg_tables import graph_from_tables, read_kg_manifest, read_table, relation_set
from recon.data_prep.corpus.linking import parse_units
from recon.data_prep.corpus.wikidata import parse_dump_line
from recon.core.errors import DataError

FIX = Path(__file__).parent / "fixtures" / "kg"
CORPUS_FIX = Path(__file__).parent / "fixtures" / "corpus"
SLICE = FIX / "wikidata_slice.json"
BAD_LINES = {22: None, 93: "id", 154: "claims.P17", 235: None, 266: "labels"}  # see make_slice.py


def _line(n: int) -> str:
    return SLICE.read_text(encoding="utf-8").splitlines()[n - 1]


# ---------------------------------------------------------------- parsing (no Ray)

def test_real_shaped_entity_gives_statements_names_and_sitelink():
    fewrel = set(relation_set("fewrel"))
    assert len(fewrel) == 744 and "P5008" not in fewrel
    rows = parse_dump_line(_line(2), path=SLICE, line=2, languages=("en", "fr"), relations=fewrel)
    assert rows.id == "Q42" and rows.sitelink == "Douglas Adams"
    assert rows.names == ("Douglas Adams", "Douglas Adams", "Douglas Noel Adams", "DNA", "Douglas Noël Adams")
    assert {r for _, r, _ in rows.statements} == {"P19", "P27", "P108", "P69", "P31", "P910"}  # literals skipped
    assert rows.dropped_statements == 1  # P5008: entity-valued, outside FewRel's relations
    everything = parse_dump_line(_line(2), path=SLICE, line=2, relations=None)
    assert ("Q42", "P5008", "Q4099686") in everything.statements and everything.names[0] == "Douglas Adams"
    prop = parse_dump_line(_line(11), path=SLICE, line=11)
    assert prop.id == "P19" and prop.names == () and prop.sitelink is None
    assert parse_dump_line("[", path=SLICE, line=1) is None


def test_bad_dump_lines_are_located_and_skip_counts_them():
    settings = {"relations": None, "languages": ["en"], "site": "enwiki"}
    payload = SLICE.read_bytes()
    rows, counts, errors = parse_chunk("dump", payload, 1, str(SLICE), settings)
    assert {e["line"]: e["field"] for e in errors} == BAD_LINES
    assert all(e["path"] == str(SLICE) for e in errors)
    assert counts["entities"] == 310 and len(rows["sitelinks"]["title"]) == 9 + 150 - 1  # Q5 has no page
    with pytest.raises(DataError) as err:
        parse_dump_line(_line(154), path=SLICE, line=154)
    assert (err.value.line, err.value.field) == (154, "claims.P17")


def test_wikiextractor_articles_become_sentences_with_title_anchors():
    raw = (FIX / "wiki_articles.jsonl").read_text(encoding="utf-8").splitlines()[0]
    units = parse_units(raw, path="wiki.jsonl", line=1)
    assert [u.sentence_id for u in units][:3] == ["wiki.jsonl:1:0", "wiki.jsonl:1:1", "wiki.jsonl:1:2"]
    second = units[1]
    assert second.text == "Douglas Adams was born in Cambridge."
    assert [(second.text[a.start:a.end], a.title) for a in second.anchors] == [
        ("Douglas Adams", "Douglas Adams"), ("Cambridge", "Cambridge")]
    assert [a.title for a in units[3].anchors] == ["St John's College, Cambridge", "United_Kingdom"]
    assert normalise_title("United_Kingdom") == "United Kingdom"


# ---------------------------------------------------------------- Ray builds


@pytest.fixture(scope="module")
def slice_tables(tmp_path_factory, local_ray):
    """Tables of the bz2-compressed slice: raise stops at the first bad line, then skip resumes and finishes."""
    tmp = tmp_path_factory.mktemp("kg")
    dump = tmp / "slice.json.bz2"
    dump.write_bytes(bz2.compress(SLICE.read_bytes()))
    out = tmp / "tables"
    config = KGBuildConfig(wikidata_dump=str(dump), out=str(out), chunk_lines=60, rows_per_part=120)
    with pytest.raises(DataError) as err:
        build_kg_tables(config, log=lambda *_: None)
    assert err.value.line in BAD_LINES and "slice.json.bz2" in str(err.value)
    manifest = build_kg_tables(config.replace(on_error="skip"), log=lambda *_: None)
    return out, manifest


@pytest.mark.slow
def test_kg_build_from_compressed_dump_slice(slice_tables):
    out, manifest = slice_tables
    assert read_kg_manifest(out) == json.loads(json.dumps(manifest))
    assert manifest["errors"]["count"] == 5
    assert {e["line"]: e["field"] for e in manifest["errors"]["first"]} == BAD_LINES
    assert manifest["build"]["resumed_chunks"] >= 1  # the chunk that stopped the raise run was kept
    assert len(manifest["inputs"]["dump"]["sha256"]) == 64 and manifest["inputs"]["dump"]["lines"] == 317
    assert manifest["settings"]["relations"] == relation_set("fewrel")
    assert manifest["counts"]["statements_other_relations"] == 1
    tables = manifest["tables"]
    assert tables["aliases"]["parts"] > 1 and tables["statements"]["parts"] > 1  # rows_per_part=120: a shuffle
    assert sorted(p.name for p in (out / "aliases").iterdir()) == [
        f"part-{k:05d}.parquet" for k in range(tables["aliases"]["parts"])]
    kg = graph_from_tables(str(out))
    assert kg.relations_between("Q42", "Q350") == ("P19",) and kg.lookup("U.K.") == ("Q145",)
    assert kg.entity_for_title("st_John's College, Cambridge") == "Q691283" and kg.names["Q42"] == "Douglas Adams"
    assert kg.lookup("birthplace") == ()  # a property's alias names no item
    # the same graph read by the in-memory reader (every relation there): same names and aliases
    memory = KnowledgeGraph.from_files(wikidata_dump=str(CORPUS_FIX / "dump.json"))
    assert memory.names["Q42"] == "Douglas Adams"
    assert len(list(read_table(str(out), "statements"))) == manifest["counts"]["statements"]


@pytest.mark.slow
def test_kg_cli_build_and_stats(tmp_path, local_ray, capsys):
    from recon.orchestration.cli.main import main

    out = tmp_path / "kg"
    assert main(["kg", "build", "--triples", str(CORPUS_FIX / "triples.tsv"), "--aliases",
                 str(CORPUS_FIX / "aliases.tsv"), "--out", str(out), "--relations", "all"]) == 0
    assert main(["kg", "stats", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 statements (all relations" in printed and "bad lines: 0" in printed
    assert main(["kg", "build", "--triples", str(CORPUS_FIX / "triples.tsv"), "--out", str(out)]) == 2  # exists


def _digests(manifest: dict) -> list:
    return [(s["id"], s["examples"], s["digest"]) for s in manifest["shards"]]


@pytest.mark.slow
def test_join_linking_equals_memory_linking_on_wikipedia_articles(tmp_path, slice_tables):
    from recon.data_prep.corpus import load_corpus
    from recon.data_prep.corpus.builder import BuildConfig, build_corpus

    tables, _ = slice_tables
    manifests = {}
    for mode in ("memory", "join"):
        manifests[mode] = build_corpus(BuildConfig(
            text=str(FIX / "wiki_articles.jsonl"), kg=str(tables), out=str(tmp_path / mode), shards=2,
            linking=mode, sentences_per_partition=3), log=lambda *_: None)
    memory, join = manifests["memory"], manifests["join"]
    assert _digests(memory) == _digests(join) and memory["counts"] == join["counts"]
    assert memory["config_hash"] == join["config_hash"] and join["build"]["linking"] == "join"
    assert join["counts"]["anchors_unlinked"] == 1  # the link to a page with no Wikidata item
    examples = {(e.head.id, e.relation, e.tail.id, e.head.source) for e in load_corpus(tmp_path / "join").examples}
    assert ("Q42", "P19", "Q350", "anchor") in examples and ("Q9531", "P159", "Q84", "anchor") in examples
    assert ("Q691283", "P17", "Q145", "anchor") in examples  # titles "St John%27s College%2C ..." and United_Kingdom
    assert ("Q42", "P108", "Q9531", "ner_alias") in examples  # the plain-text line: NER + alias join


@pytest.mark.slow
def test_demo_corpus_is_identical_through_joins_and_in_memory(tmp_path, local_ray):
    """The demo's three builds (with and without anchors, and excluding wiki80 + fewrel) both ways."""
    from recon.data_prep.corpus.config import CorpusBuildConfig
    from recon.data_prep.corpus.demo_from_benchmarks import run_demo

    reports = {}
    for mode in ("memory", "join"):
        reports[mode] = run_demo(tmp_path / mode, per_relation=2, log=lambda *_: None,
                                 build=CorpusBuildConfig(linking=mode, shards=2))
    for name, run in reports["memory"]["runs"].items():
        other = reports["join"]["runs"][name]
        for key in ("precision", "recall", "gold", "predicted", "correct", "counts", "false_positives"):
            assert run[key] == other[key], (name, key)
        assert _digests(json.loads((tmp_path / "memory" / name / "manifest.json").read_text())) == \
            _digests(json.loads((tmp_path / "join" / name / "manifest.json").read_text()))
    excluded = reports["join"]["runs"]["without_anchors_excluding_wiki80_fewrel"]
    assert excluded["counts"]["excluded_sentences"] > 0


def test_build_refuses_tables_and_files_together(tmp_path):
    from recon.data_prep.corpus.builder import BuildConfig, build_corpus
    from recon.core.errors import ReconError

    with pytest.raises(ReconError, match="not both"):
        build_corpus(BuildConfig(text=str(CORPUS_FIX / "text.jsonl"), kg=str(tmp_path), triples=str(
            CORPUS_FIX / "triples.tsv"), out=str(tmp_path / "c")))
    shutil.rmtree(tmp_path, ignore_errors=True)
