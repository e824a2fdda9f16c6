"""Name-swap views: spans and markers after a swap, seeds, the report, unseen names, and real SemEval/ChemProt rows."""
from __future__ import annotations

from pathlib import Path

import pytest

from recon.core.errors import ReconError
from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.formats import InputFormat, render
from recon.data_prep.name_pools import Name, build_pools, name_key, occurring, typed
from recon.data_prep.name_swap import SWAP_KINDS, VIEW_KINDS, check_kinds, make_view, swap_names
from recon.data_prep.special_tokens import SpecialTokens

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SPECIAL = SpecialTokens.for_vocab(())


def ex(text: str, head: tuple[int, int], tail: tuple[int, int], head_type: str | None = "PER",
       tail_type: str | None = "ORG", label: str = "r", source: str = "") -> RelationExample:
    src = "annotation"
    return RelationExample(tuple(text.split()), Entity(*head, type=head_type, type_source=src if head_type else None),
                           Entity(*tail, type=tail_type, type_source=src if tail_type else None), label, source=source)


def name(text: str, type_: str = "PER", pos: str | None = None) -> Name:
    return Name(tuple(text.split()), type_, "annotation", pos=tuple(pos.split()) if pos else None)


def span(example: RelationExample, entity: Entity) -> str:
    return " ".join(example.tokens[entity.start:entity.end])


def marked(example: RelationExample, fmt: InputFormat = InputFormat.CM) -> tuple[str, str]:
    """The words between each entity's start and end markers after rendering."""
    r = render(example, fmt, SPECIAL)
    words = r.words
    return " ".join(words[r.head_index + 1:r.head_end - 1]), " ".join(words[r.tail_index + 1:r.tail_end - 1])


TRAIN = [
    ex("Barack Obama works for Acme Corp .", (0, 2), (4, 6)),
    ex("Ann met Bob at IBM", (0, 1), (4, 5)),
    ex("Cy joined the Big Red Machine Company", (0, 1), (3, 7)),
    ex("Dee Dee Ramone sang for the Ramones", (0, 3), (6, 7)),
    ex("Eve runs Globex in Springfield", (0, 1), (2, 3)),
]


# ------------------------------------------------------------------ the splice itself

@pytest.mark.parametrize("head_first", [True, False])
def test_longer_and_shorter_names_reindex_spans_either_order(head_first: bool) -> None:
    base = ex("yesterday John Smith left Google for good", (1, 3), (4, 5)) if head_first else \
        ex("yesterday Google hired John Smith for good", (3, 5), (1, 2))
    out = swap_names(base, name("Al"), name("Big Red Machine Company", "ORG"))
    assert span(out, out.head) == "Al" and out.head.name == "Al"
    assert span(out, out.tail) == "Big Red Machine Company" and out.tail.type == "ORG"
    if head_first:
        assert out.tokens == ("yesterday", "Al", "left", "Big", "Red", "Machine", "Company", "for", "good")
    else:
        assert out.tokens == ("yesterday", "Big", "Red", "Machine", "Company", "hired", "Al", "for", "good")
    assert out.label == base.label and marked(out) == ("Al", "Big Red Machine Company")


def test_same_span_one_name_for_both() -> None:
    base = ex("the Acme Corp sued itself", (1, 3), (1, 3))
    out = swap_names(base, name("Globex", "ORG"), None)
    assert out.tokens == ("the", "Globex", "sued", "itself")
    assert (out.head.start, out.head.end) == (out.tail.start, out.tail.end) == (1, 2)
    assert out.head.name == out.tail.name == "Globex"


@pytest.mark.parametrize("outer_is_head", [True, False])
@pytest.mark.parametrize("inner_at", ["start", "end"])
def test_nested_inner_name_swapped_outer_follows(outer_is_head: bool, inner_at: str) -> None:
    text = "the University of Washington is old" if inner_at == "end" else "the Washington University campus is old"
    outer, inner = ((1, 4), (3, 4)) if inner_at == "end" else ((1, 3), (1, 2))
    base = ex(text, outer, inner) if outer_is_head else ex(text, inner, outer)
    new = name("New South Wales", "GPE")
    out = swap_names(base, None if outer_is_head else new, new if outer_is_head else None)
    o, i = (out.head, out.tail) if outer_is_head else (out.tail, out.head)
    assert span(out, i) == "New South Wales" and i.name == "New South Wales"
    expected = "University of New South Wales" if inner_at == "end" else "New South Wales University"
    assert span(out, o) == expected and o.name == expected
    assert out.tokens[:1] == ("the",) and out.tokens[-2:] == ("is", "old")


def test_tags_are_spliced_from_the_donor_or_dropped() -> None:
    base = RelationExample(("John", "left", "Google"), Entity(0, 1), Entity(2, 3), "r",
                           pos=("NNP", "VBD", "NNP"), ner=("PER", "O", "ORG"))
    donor = Name(("Ann", "Lee"), "PER", pos=("NNP", "NNP"), ner=("PER", "PER"))
    out = swap_names(base, donor, None)
    assert out.pos == ("NNP", "NNP", "VBD", "NNP") and out.ner == ("PER", "PER", "O", "ORG")
    assert swap_names(base, name("Ann Lee"), None).pos is None  # a donor without tags: none rather than misaligned


# ------------------------------------------------------------------ views

def test_view_edge_cases_and_report_counts() -> None:
    test = [ex("John Smith left Google yesterday", (0, 2), (3, 4)),
            ex("at Google , John said", (3, 4), (1, 2)),                     # head after tail
            ex("the University of Washington is old", (1, 4), (3, 4), "ORG", "GPE"),  # nested
            ex("Acme sued Acme", (0, 1), (0, 1)),                            # same span
            ex("a b c d", (0, 2), (1, 3))]                                   # crossing
    view = make_view("swap-type", test, train=TRAIN, seed=1)
    assert len(view.examples) == len(test) and [e.meta["original_index"] for e in view.examples] == list(range(5))
    report = view.report.to_dict()
    assert report["examples"] == 5 and report["mentions"] == 10 and report["coverage"] == 1.0
    assert report["swapped_mentions"] + sum(report["skipped"].values()) == report["mentions"]
    # GPE has no training name; the crossing pair is left alone; the nested outer only follows its inner name
    assert report["skipped"] == {"overlap": 2, "no_candidate": 1, "nested": 1}
    assert report["same_span"] == 1 and report["nested"] == 1
    assert view.changed == (True, True, False, True, False)
    assert view.examples[2] == test[2] and view.examples[4] == test[4]
    for orig, new in zip(test[:2], view.examples[:2]):
        assert span(new, new.head) != span(orig, orig.head) and span(new, new.tail) != span(orig, orig.tail)
        assert new.head.type == orig.head.type and new.tail.type == orig.tail.type  # same type
        assert marked(new) == (span(new, new.head), span(new, new.tail))
    assert view.examples[3].head == view.examples[3].tail


def test_same_seed_same_view_other_seed_differs_and_draws_do_not_depend_on_the_subset() -> None:
    test = [ex(f"Person{i} works at Company{i} now", (0, 1), (3, 4)) for i in range(30)]
    a, b = make_view("swap-type", test, train=TRAIN, seed=7), make_view("swap-type", test, train=TRAIN, seed=7)
    assert a.examples == b.examples and a.identity == b.identity
    c = make_view("swap-type", test, train=TRAIN, seed=8)
    assert c.examples != a.examples and c.identity != a.identity
    part = make_view("swap-type", test[10:20], train=TRAIN, seed=7)
    assert part.examples == a.examples[10:20]


def test_random_view_draws_other_types_and_untyped_policies() -> None:
    test = [ex("John held a cup", (0, 1), (3, 4), "PER", None)]  # spaCy finds no entity over "cup": UNK
    rnd = make_view("swap-random", test, train=TRAIN, seed=0, untyped="keep").examples[0]
    assert rnd.head.type == "ORG"  # the only other type in TRAIN
    kept = make_view("swap-type", test, train=TRAIN, seed=0, untyped="keep")
    assert kept.report.skipped == {"untyped": 1} and kept.report.untyped_mentions == 1
    assert span(kept.examples[0], kept.examples[0].tail) == "cup" and kept.examples[0].tail.type == "UNK"
    train_untyped = TRAIN + [ex("the cup held the tea", (1, 2), (4, 5), None, None)]
    pooled = make_view("swap-type", test, train=train_untyped, seed=0, untyped="pool")
    assert pooled.report.skipped == {} and span(pooled.examples[0], pooled.examples[0].tail) == "tea"
    with pytest.raises(ReconError, match="untyped"):
        make_view("swap-type", test, train=TRAIN, untyped="drop")


def test_unseen_names_occur_nowhere_in_training_nor_in_avoid() -> None:
    sources = [ex("Zed joined Initech", (0, 1), (2, 3)),
               ex("Obama visited Umbrella Corp", (0, 1), (2, 4)),   # "Obama" occurs inside a training sentence
               ex("Ramones fan Quinn", (2, 3), (0, 1), "PER", "ORG"),  # "ramones" is in training, case-folded
               ex("Yan left Hooli", (0, 1), (2, 3))]
    pools = build_pools(TRAIN, sources, avoid=["Yan", ("hooli",)])
    assert {" ".join(n.tokens) for n in pools.unseen["PER"]} == {"Zed", "Quinn"}
    assert {" ".join(n.tokens) for n in pools.unseen["ORG"]} == {"Initech", "Umbrella Corp"}
    assert pools.stats["unseen_rejected_in_train"] == 2 and pools.stats["unseen_rejected_in_avoid"] == 2
    test = [ex("Zed left Globex", (0, 1), (2, 3))]
    out = make_view("swap-unseen", test, pools=pools, seed=0).examples[0]
    assert span(out, out.head) == "Quinn"  # never the mention's own name
    assert span(out, out.tail) in {"Initech", "Umbrella Corp"}
    assert occurring({("a", "b")}, [["x", "A", "B"], "c d"]) == {("a", "b")}
    other = build_pools(TRAIN, sources, avoid=["Yan"])
    assert other.identity != pools.identity  # the avoid set is part of the pools' (and views') identity


def test_onlyc_view_renders_blanks_and_keeps_the_examples() -> None:
    test = [ex("John left Google", (0, 1), (2, 3), source="f.txt:1")]
    view = make_view("onlyc", test, seed=3)
    assert view.render_format is InputFormat.ONLYC and view.format_for(InputFormat.CM) is InputFormat.ONLYC
    assert view.examples[0] == test[0] and view.examples[0].meta["view"] == "onlyc"
    assert view.identity == make_view("onlyc", test, seed=4).identity  # no draw: the seed does not matter
    words = render(view.examples[0], view.format_for(InputFormat.CM), SPECIAL).words
    assert "John" not in words and "Google" not in words and "left" in words


def test_identity_follows_content_not_paths_and_kinds_are_checked() -> None:
    here = [ex("John left Google", (0, 1), (2, 3), source="/a/test.txt:1")]
    there = [ex("John left Google", (0, 1), (2, 3), source="/b/test.txt:1")]
    assert make_view("swap-type", here, train=TRAIN).identity == make_view("swap-type", there, train=TRAIN).identity
    assert make_view("swap-type", here, train=TRAIN).identity != make_view("swap-random", here, train=TRAIN).identity
    assert check_kinds(["onlyc", "swap-type"]) == ("onlyc", "swap-type")
    with pytest.raises(ReconError, match="unknown view 'swap-names'"):
        check_kinds(["swap-names"])
    with pytest.raises(ReconError, match="training examples"):
        make_view("swap-type", here)


# ------------------------------------------------------------------ real rows

def _only_spans_differ(orig: RelationExample, new: RelationExample) -> None:
    """Tokens outside the entity spans identical, label identical, spans valid and holding the new names."""
    assert new.label == orig.label and new.source == orig.source
    for e in (new.head, new.tail):
        assert 0 <= e.start < e.end <= len(new.tokens)
    (a, b), (c, d) = sorted([(orig.head.start, orig.head.end), (orig.tail.start, orig.tail.end)])
    (na, nb), (nc, nd) = sorted([(new.head.start, new.head.end), (new.tail.start, new.tail.end)])
    assert new.tokens[:na] == orig.tokens[:a]
    assert new.tokens[nb:nc] == orig.tokens[b:c]
    assert new.tokens[nd:] == orig.tokens[d:]
    for e in (new.head, new.tail):
        assert e.name == " ".join(new.tokens[e.start:e.end])


@pytest.mark.parametrize("dataset", ["semeval", "chemprot"])
def test_real_rows_differ_only_inside_the_entity_spans(dataset: str) -> None:
    from recon.data_prep.registry import load_dataset

    ds = load_dataset(dataset, data_dir=str(DATA))
    # A slice keeps the spaCy pass short (typing is cached on disk after the first run).
    train, test, dev = ds.splits["train"][:600], ds.splits["test"][:150], ds.splits["dev"][:150]
    pools = build_pools(typed(train), typed(dev))
    for kind in SWAP_KINDS:
        view = make_view(kind, test, pools=pools, seed=5)
        report = view.report.to_dict()
        assert report["examples"] == 150 and report["swapped_mentions"] + sum(report["skipped"].values()) == 300
        assert report["changed_examples"] >= 100, report  # the UNK pool makes nominals swappable
        swapped = set()
        for orig, new, changed in zip(test, view.examples, view.changed):
            _only_spans_differ(orig, new)
            assert changed == (new.tokens != orig.tokens)
            assert marked(new) == (span(new, new.head), span(new, new.tail))
            swapped |= {name_key(new.tokens[n.start:n.end]) for o, n in ((orig.head, new.head), (orig.tail, new.tail))
                        if orig.tokens[o.start:o.end] != new.tokens[n.start:n.end]}
        if kind == "swap-unseen":  # no swapped-in name occurs anywhere in the training sentences
            assert swapped and not occurring(swapped, (x.tokens for x in train))
        else:
            assert occurring(swapped, (x.tokens for x in train)) == swapped
    assert set(VIEW_KINDS) == {*SWAP_KINDS, "onlyc"}
