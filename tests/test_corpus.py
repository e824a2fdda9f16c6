"""Corpus builder: KG/alias/dump readers, linking rules, exclusion, and a tiny Ray Data build."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from spacy.tokens import Doc
from spacy.vocab import Vocab

from recon.data_prep.corpus import load_corpus, pair_shard, read_manifest, shards_for_rank
from recon.data_prep.corpus.exclusion import exclusion_from_datasets, exclusion_from_examples
from recon.data_prep.corpus.index import CorpusExample, Mention
from recon.data_prep.corpus.kg import (KnowledgeGraph, normalise_name, read_aliases, read_triples,
                                 read_wikidata_dump)
from recon.data_prep.corpus.linking import Exclusion, Linker, SentenceInput, parse_line
from recon.core.errors import DataError
from recon.data_prep.example import Entity, RelationExample

FIX = Path(__file__).parent / "fixtures" / "corpus"


# ---------------------------------------------------------------- readers

def test_triples_file_with_tabs_spaces_comments_and_blank_lines():
    assert list(read_triples(FIX / "triples.tsv")) == [
        ("Q42", "P19", "Q350"), ("Q42", "P108", "Q9531"), ("Q350", "P17", "Q145"), ("Q1", "P1", "Q2")]


def test_bad_triple_names_file_line_and_field():
    with pytest.raises(DataError) as err:
        list(read_triples(FIX / "bad_triples.tsv"))
    assert err.value.line == 1 and err.value.field == "triple" and "bad_triples.tsv" in str(err.value)


def test_alias_tables_tsv_and_jsonl():
    assert dict(read_aliases(FIX / "aliases.tsv"))["Q9531"] == ["BBC", "British Broadcasting Corporation"]
    rows = read_aliases(FIX / "aliases.jsonl")
    assert next(rows) == ("Q42", ["Douglas Adams", "Adams"])
    assert next(rows) == ("Q350", ["Cambridge"])
    with pytest.raises(DataError) as err:
        next(rows)
    assert (err.value.line, err.value.field) == (3, "aliases")


def test_wikidata_dump_streams_entities_and_entity_valued_claims_only():
    entities = list(read_wikidata_dump(FIX / "dump.json"))
    assert [e.id for e in entities] == ["Q42", "Q350", "Q9531"]
    assert entities[0].names == ("Douglas Adams", "Douglas Noel Adams")
    assert entities[0].triples == (("Q42", "P19", "Q350"),)  # the date and the somevalue claim are skipped
    assert entities[2].names == ()  # no English label
    kg = KnowledgeGraph.from_files(wikidata_dump=FIX / "dump.json")
    assert kg.relations_between("Q42", "Q350") == ("P19",) and kg.lookup("douglas noel adams") == ("Q42",)


def test_bad_dump_line_names_line_and_field():
    with pytest.raises(DataError) as err:
        list(read_wikidata_dump(FIX / "bad_dump.json"))
    assert (err.value.line, err.value.field) == (3, "claims.P17")


def test_normalised_names_ignore_case_punctuation_and_spacing():
    assert normalise_name("U.S.") == normalise_name("us")
    assert normalise_name("Bud Frye-Field") == normalise_name("bud  frye - field")
    assert normalise_name("Cambridge") != normalise_name("Cambridge Ltd")


def test_input_lines_and_bad_anchor():
    plain = parse_line("Just text.", path="t.txt", line=4)
    assert plain.text == "Just text." and plain.sentence_id == "t.txt:4"
    tokens = parse_line('{"tokens": ["a", "b"], "anchors": [{"start": 1, "end": 2, "entity": "Q1"}]}',
                        path="t.txt", line=1)
    assert tokens.tokens == ("a", "b") and tokens.anchors[0].entity == "Q1"
    with pytest.raises(DataError) as err:
        parse_line((FIX / "bad_text.jsonl").read_text().splitlines()[1], path=FIX / "bad_text.jsonl", line=2)
    assert (err.value.line, err.value.field) == (2, "anchors[0].start")
    with pytest.raises(DataError, match="exactly one"):
        parse_line('{"text": "a", "tokens": ["a"]}', path="t.txt", line=1)


# ---------------------------------------------------------------- linking (fixed NER, no model)

class FixedNER:
    """A spaCy stand-in whose NER output is given per sentence, so linking rules are tested exactly."""

    def __init__(self, ents: dict[tuple[str, ...], list[str]]):
        self.vocab = Vocab()
        self.ents = ents

    def pipe(self, inputs, batch_size=64):
        for doc in inputs:
            words = [t.text for t in doc]
            yield Doc(self.vocab, words=words, ents=self.ents.get(tuple(words), ["O"] * len(words)))


def _kg() -> KnowledgeGraph:
    return KnowledgeGraph.from_files(FIX / "triples.tsv", FIX / "aliases.tsv")


def _link(words, ents, anchors=(), exclusion=None):
    from recon.data_prep.corpus.linking import Anchor

    linker = Linker(_kg(), FixedNER({tuple(words): ents}), exclusion=exclusion, num_shards=4)
    sentence = SentenceInput("s:1", tokens=tuple(words), anchors=tuple(Anchor(*a) for a in anchors))
    return linker.link([sentence])[0]


def test_anchor_wins_over_overlapping_ner_mention():
    words = ["Douglas", "Adams", "left", "the", "BBC"]
    examples, counts = _link(words, ["B-PERSON", "I-PERSON", "O", "O", "B-ORG"], anchors=[(1, 2, "Q42")])
    assert counts["ner_overlaps_anchor"] == 1 and counts["mentions_anchor"] == 1
    assert [(e.head.id, e.head.source, e.head.start, e.tail.id, e.tail.source, e.relation) for e in examples] == \
        [("Q42", "anchor", 1, "Q9531", "ner_alias", "P108")]


def test_ambiguous_alias_is_skipped_and_counted():
    words = ["Adams", "visited", "Cambridge"]
    examples, counts = _link(words, ["B-PERSON", "O", "B-GPE"])  # Cambridge = Q350 or Q2
    assert counts["ner_ambiguous"] == 1 and counts["mentions_ner_alias"] == 1
    assert examples == []


def test_same_entity_overlap_and_no_relation_pairs_are_dropped_and_counted():
    words = ["Adams", "and", "Douglas", "Adams", "in", "U.K.", "Cambridge"]
    examples, counts = _link(words, ["B-PERSON", "O", "B-PERSON", "I-PERSON", "O", "B-GPE", "O"],
                             anchors=[(6, 7, "Q350"), (5, 7, "Q145")])
    # mentions: Q350 [6,7) and Q145 [5,7) (anchors, overlapping), Adams + Douglas Adams -> Q42 twice
    # (the NER U.K. overlaps the Q145 anchor and is dropped)
    assert counts["dropped_same_entity"] == 2
    assert counts["dropped_overlap"] == 2
    assert counts["dropped_no_relation"] == 6  # Q350->Q42 x2, Q145->Q42 x2, Q42->Q145 x2
    got = sorted((e.head.start, e.tail.start, e.relation) for e in examples)
    assert got == [(0, 6, "P19"), (2, 6, "P19")]
    assert counts["examples"] == 2


def test_exclusion_removes_the_whole_sentence_by_unordered_id_or_name_pair():
    words = ["Adams", "left", "the", "BBC"]
    ents = ["B-PERSON", "O", "O", "B-ORG"]
    kept, counts = _link(words, ents)
    assert len(kept) == 1 and counts["excluded_sentences"] == 0
    by_id = Exclusion(id_pairs=frozenset({("Q42", "Q9531")}))  # unordered key, written sorted
    removed, counts = _link(words, ents, exclusion=by_id)
    assert removed == [] and counts["excluded_sentences"] == 1 and counts["excluded_examples"] == 1
    reverse = exclusion_from_examples([RelationExample(
        ("BBC", "employs", "douglas", "adams"), Entity(0, 1), Entity(2, 4), "x")])  # no ids -> names
    assert reverse.name_pairs == {("bbc", "douglasadams")}
    removed, counts = _link(words, ents, exclusion=reverse)  # 'Adams' mention, KG name 'Douglas Adams'
    assert removed == [] and counts["excluded_sentences"] == 1


def test_exclusion_pairs_from_real_benchmarks_are_unordered_and_report_missing_splits():
    exclusion, report = exclusion_from_datasets(["wiki80"])
    # wiki80/dev.txt line 1: bud frye field (Q14692752) -> madison (Q1913353)
    example = CorpusExample("u", "s:1", ("Madison", "x", "Bud"), "P931",
                            Mention("Q1913353", "Madison", 0, 1, "anchor"),
                            Mention("Q14692752", "Bud", 2, 3, "anchor"))
    assert exclusion.matches(example, KnowledgeGraph())
    assert report["wiki80"]["splits"] == ["dev"] and report["wiki80"]["missing_splits"] == ["test"]
    assert report["wiki80"]["examples"] == 5600 and 0 < report["wiki80"]["id_pairs"] <= 5600


def test_real_spacy_pipeline_links_plain_text():
    linker = Linker(_kg(), num_shards=2)
    examples, counts = linker.link([parse_line("Douglas Adams worked for the BBC in London.",
                                               path="t.txt", line=1)])[0]
    assert [(e.head.name, e.tail.name, e.relation) for e in examples] == [("Douglas Adams", "BBC", "P108")]
    assert examples[0].shard == pair_shard("Q42", "Q9531", 2)
    assert counts["ner_unlinked"] >= 1  # London is not in the alias table


# ---------------------------------------------------------------- Ray Data build

@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_tiny_ray_build_writes_shards_manifest_and_loads_back(tmp_path, fmt, capsys):
    from recon.data_prep.corpus.builder import BuildConfig, build_corpus
    from recon.orchestration.cli.main import main

    out = tmp_path / "corpus"
    manifest = build_corpus(BuildConfig(text=str(FIX / "text.jsonl"), triples=str(FIX / "triples.tsv"),
                                        aliases=str(FIX / "aliases.tsv"), out=str(out), format=fmt, shards=3))
    assert read_manifest(out) == json.loads(json.dumps(manifest))
    assert manifest["inputs"]["text"]["lines"] == 5 and len(manifest["inputs"]["text"]["sha256"]) == 64
    assert manifest["counts"]["sentences"] == 4  # the blank line is not a sentence
    # line 1: anchor Q42 + ambiguous Cambridge + BBC; line 2: Douglas Adams, BBC; lines 4-5 anchors
    assert manifest["relations"] == {"P108": 3, "P19": 2}
    assert manifest["linking_sources"]["anchor"] == 6
    assert manifest["dropped"]["ner_ambiguous"] >= 1
    assert sum(s["examples"] for s in manifest["shards"]) == 5 == manifest["counts"]["examples"]
    assert [s["id"] for s in manifest["shards"]] == [0, 1, 2]
    assert not list(tmp_path.glob(".corpus.tmp-*"))  # temp dir renamed away

    index = load_corpus(out)
    assert len(index) == 5 and set(index.bags) == {"P108", "P19"}
    for shard in manifest["shards"]:
        part = load_corpus(out, shard_ids=[shard["id"]])
        assert len(part) == shard["examples"]
        assert all(e.shard == shard["id"] == pair_shard(e.head.id, e.tail.id, 3) for e in part.examples)
    assert sorted(e.uid for r in range(2) for e in load_corpus(out, shard_ids=shards_for_rank(3, r, 2)).examples) \
        == sorted(e.uid for e in index.examples)
    line5 = [e for e in index.examples if e.sentence_id == "text.jsonl:5"]
    assert Counter(e.relation for e in line5) == {"P19": 1, "P108": 1}
    assert line5[0].tokens == ("Adams", "left", "Cambridge", "for", "the", "BBC", ".")

    capsys.readouterr()
    assert main(["corpus", "stats", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 relations, 5 examples" in printed and "anchor 6" in printed
    assert main(["corpus", "build", "--text", str(FIX / "text.jsonl"), "--triples", str(FIX / "triples.tsv"),
                 "--out", str(out)]) == 2  # exists, no --overwrite


def test_build_rejects_bad_input_before_starting_ray(tmp_path):
    from recon.data_prep.corpus.builder import BuildConfig, build_corpus

    with pytest.raises(DataError) as err:
        build_corpus(BuildConfig(text=str(FIX / "bad_text.jsonl"), triples=str(FIX / "triples.tsv"),
                                 aliases=None, out=str(tmp_path / "c")))
    assert err.value.line == 2 and err.value.field == "anchors[0].start"
