"""Entity linking for the corpus, as in the paper: anchors first, then spaCy NER mentions linked by
normalised name/alias matching; every ordered pair of linked mentions with a KG relation is one example.

Input lines (one sentence, or one short document treated as one unit, per line; UTF-8):

- plain text: any line that does not start with ``{``;
- JSON with text: ``{"text": str, "anchors": [{"start": int, "end": int, "entity": str}, ...]}``,
  ``start``/``end`` are CHARACTER offsets into ``text``, end exclusive;
- JSON with tokens: ``{"tokens": [str, ...], "anchors": [...]}``, ``start``/``end`` are TOKEN
  indices, end exclusive.

``anchors`` is optional in both JSON forms. spaCy tokenises ``text`` (white-space tokens are
dropped); ``tokens`` are kept as given. An anchor span is snapped outwards to token boundaries.

Rules: a leading "the" is dropped from an NER mention that does not match as a whole; an NER
mention overlapping an anchor is dropped (the anchor wins); an NER mention whose
normalised text matches several entities is skipped (``ner_ambiguous``), none (``ner_unlinked``).
Ordered pairs with head == tail entity (``dropped_same_entity``), overlapping spans
(``dropped_overlap``) or no KG relation (``dropped_no_relation``) emit nothing; a pair with several
KG relations emits one example per relation. Test-set exclusion removes the WHOLE sentence as soon as
one of its examples has an excluded unordered entity pair (by id, or by normalised names).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any, Iterable

from ..errors import DataError
from .index import CorpusExample, Mention, pair_key, pair_shard
from .kg import KnowledgeGraph, normalise_name

ANCHOR, NER_ALIAS = "anchor", "ner_alias"
# Every count the linker keeps; the builder sums them over the corpus into the manifest.
COUNT_KEYS: tuple[str, ...] = (
    "sentences", "sentences_with_examples", "examples", "mentions_anchor", "mentions_ner_alias",
    "ner_unlinked", "ner_ambiguous", "ner_overlaps_anchor", "dropped_same_entity",
    "dropped_overlap", "dropped_no_relation", "excluded_sentences", "excluded_examples",
    "examples_anchor_anchor", "examples_anchor_ner_alias", "examples_ner_alias_ner_alias",
)
SPACY_DISABLE = ("parser", "tagger", "lemmatizer", "attribute_ruler", "senter")


@dataclass(frozen=True)
class Anchor:
    start: int
    end: int
    entity: str


@dataclass(frozen=True)
class SentenceInput:
    """One parsed input line: either ``text`` (char anchors) or ``tokens`` (token anchors)."""

    sentence_id: str
    text: str | None = None
    tokens: tuple[str, ...] | None = None
    anchors: tuple[Anchor, ...] = ()


def parse_line(raw: str, *, path: str | Path, line: int, sentence_id: str | None = None) -> SentenceInput:
    """Parse and validate one input line (see the module docstring for the accepted forms)."""
    sid = sentence_id or f"{Path(path).name}:{line}"
    stripped = raw.strip()
    if not stripped.startswith("{"):
        return SentenceInput(sid, text=stripped)
    try:
        record = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", path=path, line=line) from exc
    if not isinstance(record, dict):
        raise DataError("expected a JSON object", path=path, line=line)
    text, tokens = record.get("text"), record.get("tokens")
    if (text is None) == (tokens is None):
        raise DataError("give exactly one of 'text' or 'tokens'", path=path, line=line, field="text")
    if text is not None and not isinstance(text, str):
        raise DataError("expected a string", path=path, line=line, field="text")
    if tokens is not None and (not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens)):
        raise DataError("expected a list of strings", path=path, line=line, field="tokens")
    limit = len(text) if text is not None else len(tokens)
    raw_anchors = record.get("anchors", [])
    if not isinstance(raw_anchors, list):
        raise DataError("expected a list", path=path, line=line, field="anchors")
    anchors = []
    for k, anchor in enumerate(raw_anchors):
        where = f"anchors[{k}]"
        if not isinstance(anchor, dict):
            raise DataError("expected an object", path=path, line=line, field=where)
        for key in ("start", "end"):
            if not isinstance(anchor.get(key), int) or isinstance(anchor.get(key), bool):
                raise DataError("expected an integer", path=path, line=line, field=f"{where}.{key}")
        if not isinstance(anchor.get("entity"), str) or not anchor["entity"]:
            raise DataError("expected an entity id", path=path, line=line, field=f"{where}.entity")
        if not 0 <= anchor["start"] < anchor["end"] <= limit:
            unit = "characters" if text is not None else "tokens"
            raise DataError(f"span [{anchor['start']}, {anchor['end']}) is outside the {limit} {unit}",
                            path=path, line=line, field=f"{where}.start")
        anchors.append(Anchor(anchor["start"], anchor["end"], anchor["entity"]))
    return SentenceInput(sid, text=text, tokens=tuple(tokens) if tokens is not None else None,
                         anchors=tuple(anchors))


@dataclass(frozen=True)
class Exclusion:
    """Unordered entity pairs to keep out of the corpus: by entity id and by normalised names."""

    id_pairs: frozenset[tuple[str, str]] = frozenset()
    name_pairs: frozenset[tuple[str, str]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.id_pairs or self.name_pairs)

    def matches(self, example: CorpusExample, kg: KnowledgeGraph) -> bool:
        if pair_key(example.head.id, example.tail.id) in self.id_pairs:
            return True
        if not self.name_pairs:
            return False
        head_names = {normalise_name(example.head.name), normalise_name(kg.names.get(example.head.id, ""))}
        tail_names = {normalise_name(example.tail.name), normalise_name(kg.names.get(example.tail.id, ""))}
        return any(pair_key(h, t) in self.name_pairs for h in head_names for t in tail_names if h and t)


def _doc_mentions(doc: Any, sentence: SentenceInput, kg: KnowledgeGraph, counts: Counter) -> tuple[list[str], list[Mention]]:
    """Tokens (white space dropped) and linked mentions of one spaCy ``Doc``."""
    keep = [i for i, tok in enumerate(doc) if not tok.is_space]
    new_index = {old: new for new, old in enumerate(keep)}

    def remap(start: int, end: int) -> tuple[int, int] | None:
        inside = [new_index[i] for i in range(start, end) if i in new_index]
        return (inside[0], inside[-1] + 1) if inside else None

    tokens = [doc[i].text for i in keep]
    mentions: list[Mention] = []
    for anchor in sentence.anchors:
        if sentence.text is not None:
            span = doc.char_span(anchor.start, anchor.end, alignment_mode="expand")
            if span is None:
                continue
            start, end = span.start, span.end
        else:
            start, end = anchor.start, anchor.end
        mapped = remap(start, end)
        if mapped is None:
            continue
        name = " ".join(tokens[mapped[0]:mapped[1]])
        mentions.append(Mention(anchor.entity, name, mapped[0], mapped[1], ANCHOR))
        counts["mentions_anchor"] += 1
    anchored = list(mentions)
    for ent in doc.ents:
        if len(ent) > 1 and ent[0].lower_ == "the" and not kg.lookup(ent.text):
            ent = ent[1:]  # spaCy often includes the article ("the BBC"); aliases rarely do
        mapped = remap(ent.start, ent.end)
        if mapped is None:
            continue
        if any(mapped[0] < m.end and m.start < mapped[1] for m in anchored):
            counts["ner_overlaps_anchor"] += 1
            continue
        candidates = kg.lookup(ent.text)
        if not candidates:
            counts["ner_unlinked"] += 1
        elif len(candidates) > 1:
            counts["ner_ambiguous"] += 1
        else:
            mentions.append(Mention(candidates[0], " ".join(tokens[mapped[0]:mapped[1]]),
                                    mapped[0], mapped[1], NER_ALIAS))
            counts["mentions_ner_alias"] += 1
    return tokens, mentions


def pair_examples(
    sentence_id: str, tokens: list[str], mentions: list[Mention], kg: KnowledgeGraph,
    counts: Counter, num_shards: int = 1,
) -> list[CorpusExample]:
    """One example per ordered pair of linked mentions and KG relation between their entities."""
    out = []
    for head, tail in permutations(mentions, 2):
        if head.id == tail.id:
            counts["dropped_same_entity"] += 1
            continue
        if head.start < tail.end and tail.start < head.end:
            counts["dropped_overlap"] += 1
            continue
        relations = kg.relations_between(head.id, tail.id)
        if not relations:
            counts["dropped_no_relation"] += 1
            continue
        for relation in relations:
            uid = f"{sentence_id}|{head.start}-{head.end}|{tail.start}-{tail.end}|{relation}"
            out.append(CorpusExample(uid, sentence_id, tuple(tokens), relation, head, tail,
                                     pair_shard(head.id, tail.id, num_shards)))
    return out


class Linker:
    """Links sentences to the KG; holds one spaCy pipeline (load it once per Ray worker)."""

    def __init__(self, kg: KnowledgeGraph, nlp: Any = None, *, exclusion: Exclusion | None = None,
                 num_shards: int = 1, batch_size: int = 64) -> None:
        if nlp is None:
            from .. import spacy_pipeline

            nlp = spacy_pipeline.load(exclude=SPACY_DISABLE)
        self.kg, self.nlp = kg, nlp
        self.exclusion = exclusion or Exclusion()
        self.num_shards = num_shards
        self.batch_size = batch_size

    def _docs(self, sentences: list[SentenceInput]) -> Iterable[Any]:
        from spacy.tokens import Doc

        inputs = [s.text if s.text is not None else Doc(self.nlp.vocab, words=list(s.tokens))
                  for s in sentences]
        return self.nlp.pipe(inputs, batch_size=self.batch_size)

    def link(self, sentences: list[SentenceInput]) -> list[tuple[list[CorpusExample], Counter]]:
        """Examples and counts for each sentence, in input order."""
        results = []
        for sentence, doc in zip(sentences, self._docs(sentences)):
            counts: Counter = Counter(sentences=1)
            tokens, mentions = _doc_mentions(doc, sentence, self.kg, counts)
            examples = pair_examples(sentence.sentence_id, tokens, mentions, self.kg, counts, self.num_shards)
            if examples and self.exclusion and any(self.exclusion.matches(e, self.kg) for e in examples):
                counts["excluded_sentences"] += 1
                counts["excluded_examples"] += len(examples)
                examples = []
            counts["examples"] += len(examples)
            for e in examples:
                first, second = sorted((e.head.source, e.tail.source))
                counts[f"examples_{first}_{second}"] += 1
            counts["sentences_with_examples"] += int(bool(examples))
            results.append((examples, counts))
        return results
