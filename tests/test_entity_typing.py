"""spaCy entity typing: labels by overlap, annotation kept, on-disk cache skips spaCy."""
from __future__ import annotations

import json

from recon.data_prep import entity_typing
from recon.data_prep.example import Entity, RelationExample


def _examples():
    return [
        RelationExample(("barack", "obama", "visited", "Paris", "in", "May", "2009", "."),
                        Entity(0, 2), Entity(3, 4), "r"),
        RelationExample(("the", "cup", "is", "in", "the", "box"), Entity(1, 2), Entity(5, 6), "r"),
        RelationExample(("x", "y"), Entity(0, 1, type="ORG", type_source="annotation"),
                        Entity(1, 2, type="GPE", type_source="annotation"), "r"),
    ]


def test_types_from_spacy_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    calls = []
    real = entity_typing.spacy_types
    monkeypatch.setattr(entity_typing, "spacy_types", lambda exs, **kw: calls.append(len(exs)) or real(exs, **kw))
    typed = entity_typing.ensure_types(_examples(), cache_key="k1")
    assert calls == [2]  # the annotated example never reaches spaCy
    assert typed[0].tail.type == "GPE" and typed[0].tail.type_source == "spacy"
    assert typed[1].head.type == "UNK" and typed[1].tail.type_source == "spacy"
    assert (typed[2].head.type, typed[2].head.type_source) == ("ORG", "annotation")
    files = list((tmp_path / "entity_types").glob("*.json"))
    assert len(files) == 1 and len(json.loads(files[0].read_text())) == 2
    again = entity_typing.ensure_types(_examples(), cache_key="k1")
    assert calls == [2] and again == typed  # second call: cache only, spaCy not run
    entity_typing.ensure_types(_examples()[:1], cache_key="k2")  # another key -> recomputed
    assert calls == [2, 1]


def test_best_overlap():
    ents = [(0, 5, "ORG"), (6, 20, "PERSON")]
    assert entity_typing._best_label((3, 10), ents) == "PERSON"
    assert entity_typing._best_label((30, 35), ents) == "UNK"
