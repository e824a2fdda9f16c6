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
import re
from collections import Counter
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import unquote

from recon.core.errors import DataError
from recon.data_prep.corpus.index import CorpusExample, Mention, pair_key, pair_shard
from recon.data_prep.corpus.kg import KnowledgeGraph, normalise_name, normalise_title

ANCHOR, NER_ALIAS = "anchor", "ner_alias"
# Every count the linker keeps; the builder sums them over the corpus into the manifest.
COUNT_KEYS: tuple[str, ...] = (
    "sentences", "sentences_with_examples", "examples", "mentions_anchor", "mentions_ner_alias",
    "ner_unlinked", "ner_ambiguous", "ner_overlaps_anchor", "dropped_same_entity",
    "dropped_overlap", "dropped_no_relation", "excluded_sentences", "excluded_examples",
    "examples_anchor_anchor", "examples_anchor_ner_alias", "examples_ner_alias_ner_alias",
    "anchors_unlinked",
)
SPACY_DISABLE = ("parser", "tagger", "lemmatizer", "attribute_ruler", "senter")


@dataclass(frozen=True)
class Anchor:
    """A span linked by the input: to an ``entity`` id, or to a Wikipedia ``title`` (mapped to an id
    through the sitelinks table; ``anchors_unlinked`` counts titles with no entity)."""

    start: int
    end: int
    entity: str | None
    title: str | None = None


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


_LINK = re.compile(r'<a\s+href="([^"]*)"\s*>(.*?)</a>', re.DOTALL | re.IGNORECASE)
_SENTENCE_END = re.compile(r'(?<=[.!?])["\u201d)\]]?\s+(?=["\u201c(\[]?[A-Z0-9])')


def is_wikiextractor(record: dict) -> bool:
    """A WikiExtractor ``--json`` article: ``text`` with ``<a href>`` links, plus ``title``/``url``, no anchors."""
    return "anchors" not in record and isinstance(record.get("text"), str) and ("url" in record or "title" in record)


def wikiextractor_units(record: dict, *, path: str | Path, line: int) -> list[SentenceInput]:
    """One WikiExtractor article -> sentences with title anchors (ids ``file:line:k``).

    Links ``<a href="Page%20title">surface</a>`` (what ``WikiExtractor.py --json --links`` writes) become
    anchors on ``surface`` whose ``title`` (URL-decoded) is mapped to a Wikidata id through the
    sitelinks table; other tags are left as text. The article is split at line breaks (paragraphs)
    and then at sentence ends (``.``/``!``/``?`` followed by white space and a capital or digit: a
    rule, not a model; a link crossing a boundary is dropped).
    """
    text = record["text"]
    plain, anchors, last = [], [], 0
    length = 0
    for match in _LINK.finditer(text):
        before = text[last:match.start()]
        plain.append(before)
        length += len(before)
        surface = match.group(2)
        title = unquote(match.group(1)).strip()
        if surface.strip() and title:
            anchors.append((length, length + len(surface), title))
        plain.append(surface)
        length += len(surface)
        last = match.end()
    plain.append(text[last:])
    body = "".join(plain)
    units, k = [], 0
    offset = 0
    for paragraph in body.split("\n"):
        starts = [0] + [m.end() for m in _SENTENCE_END.finditer(paragraph)]
        ends = starts[1:] + [len(paragraph)]
        for a, b in zip(starts, ends):
            sentence = paragraph[a:b]
            lead = len(sentence) - len(sentence.lstrip())
            sentence = sentence.strip()
            if not sentence:
                continue
            begin = offset + a + lead
            inside = tuple(Anchor(s - begin, e - begin, None, t) for s, e, t in anchors
                           if begin <= s and e <= begin + len(sentence))
            units.append(SentenceInput(f"{Path(path).name}:{line}:{k}", text=sentence, anchors=inside))
            k += 1
        offset += len(paragraph) + 1
    return units


def parse_units(raw: str, *, path: str | Path, line: int) -> list[SentenceInput]:
    """The linking units of one input line: one sentence, or a WikiExtractor article's sentences."""
    stripped = raw.strip()
    if stripped.startswith("{"):
        try:
            record = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", path=path, line=line) from exc
        if isinstance(record, dict) and is_wikiextractor(record):
            return wikiextractor_units(record, path=path, line=line)
    return [parse_line(raw, path=path, line=line)]


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


def _remapper(doc: Any) -> tuple[list[str], Any]:
    keep = [i for i, tok in enumerate(doc) if not tok.is_space]
    new_index = {old: new for new, old in enumerate(keep)}

    def remap(start: int, end: int) -> list[int] | None:
        inside = [new_index[i] for i in range(start, end) if i in new_index]
        return [inside[0], inside[-1] + 1] if inside else None

    return [doc[i].text for i in keep], remap


def extract_mentions(doc: Any, sentence: SentenceInput) -> dict:
    """The KG-independent half of linking (the spaCy stage): tokens, anchor spans, NER candidates.

    A plain, JSON-able dict, so the join pipeline (``join_linking``) can ship it between stages:
    ``tokens``; ``anchors`` ``[start, end, entity, title]`` (token spans; ``title`` set for
    Wikipedia links still to be mapped through the sitelinks table); ``ner`` ``[full_text,
    full_span, trimmed_text, trimmed_span]`` (the trimmed form, without a leading "the", is tried
    when the full text matches no alias; ``None`` when the mention has no leading "the").
    """
    tokens, remap = _remapper(doc)
    anchors = []
    for anchor in sentence.anchors:
        if sentence.text is not None:
            span = doc.char_span(anchor.start, anchor.end, alignment_mode="expand")
            if span is None:
                continue
            start, end = span.start, span.end
        else:
            start, end = anchor.start, anchor.end
        mapped = remap(start, end)
        if mapped is not None:
            anchors.append([mapped[0], mapped[1], anchor.entity, anchor.title])
    ner = []
    for ent in doc.ents:
        trimmed = len(ent) > 1 and ent[0].lower_ == "the"
        ner.append([ent.text, remap(ent.start, ent.end),
                    ent[1:].text if trimmed else None, remap(ent.start + 1, ent.end) if trimmed else None])
    return {"sentence_id": sentence.sentence_id, "tokens": tokens, "anchors": anchors, "ner": ner}


def lookup_keys(extracted: dict) -> tuple[set[str], set[str]]:
    """The normalised surfaces and the link titles :func:`resolve_mentions` will look up."""
    surfaces = set()
    for full, _, trimmed, _ in extracted["ner"]:
        surfaces.add(normalise_name(full))
        if trimmed is not None:
            surfaces.add(normalise_name(trimmed))
    surfaces.discard("")
    titles = {normalise_title(a[3]) for a in extracted["anchors"] if a[2] is None and a[3]}
    return surfaces, titles


def resolve_mentions(extracted: dict, kg: Any, counts: Counter) -> list[Mention]:
    """The KG half: anchors (link titles mapped to entities), then NER mentions linked by alias.

    ``kg`` needs ``lookup(surface)`` and, for title anchors, ``entity_for_title(title)``: a
    :class:`KnowledgeGraph`, or the per-sentence slice the join pipeline assembles from its joins.
    """
    tokens = extracted["tokens"]
    mentions: list[Mention] = []
    for start, end, entity, title in extracted["anchors"]:
        if entity is None:
            entity = kg.entity_for_title(title) if title else None
            if entity is None:
                counts["anchors_unlinked"] += 1
                continue
        mentions.append(Mention(entity, " ".join(tokens[start:end]), start, end, ANCHOR))
        counts["mentions_anchor"] += 1
    anchored = list(mentions)
    for full, full_span, trimmed, trimmed_span in extracted["ner"]:
        text, mapped = full, full_span
        if trimmed is not None and not kg.lookup(full):
            text, mapped = trimmed, trimmed_span  # spaCy often includes the article ("the BBC"); aliases rarely do
        if mapped is None:
            continue
        if any(mapped[0] < m.end and m.start < mapped[1] for m in anchored):
            counts["ner_overlaps_anchor"] += 1
            continue
        candidates = kg.lookup(text)
        if not candidates:
            counts["ner_unlinked"] += 1
        elif len(candidates) > 1:
            counts["ner_ambiguous"] += 1
        else:
            mentions.append(Mention(candidates[0], " ".join(tokens[mapped[0]:mapped[1]]),
                                    mapped[0], mapped[1], NER_ALIAS))
            counts["mentions_ner_alias"] += 1
    return mentions


def _doc_mentions(doc: Any, sentence: SentenceInput, kg: KnowledgeGraph, counts: Counter) -> tuple[list[str], list[Mention]]:
    """Tokens (white space dropped) and linked mentions of one spaCy ``Doc``."""
    extracted = extract_mentions(doc, sentence)
    return extracted["tokens"], resolve_mentions(extracted, kg, counts)


def candidate_pairs(mentions: list[Mention]) -> set[tuple[str, str]]:
    """The ordered entity pairs :func:`pair_examples` will look up relations for."""
    return {(h.id, t.id) for h, t in permutations(mentions, 2)
            if h.id != t.id and not (h.start < t.end and t.start < h.end)}


def finish_sentence(sentence_id: str, tokens: list[str], mentions: list[Mention], kg: Any,
                    exclusion: "Exclusion", counts: Counter, num_shards: int) -> list[CorpusExample]:
    """Examples of one sentence after pairing, exclusion and the per-sentence counts (both paths)."""
    examples = pair_examples(sentence_id, tokens, mentions, kg, counts, num_shards)
    if examples and exclusion and any(exclusion.matches(e, kg) for e in examples):
        counts["excluded_sentences"] += 1
        counts["excluded_examples"] += len(examples)
        examples = []
    counts["examples"] += len(examples)
    for e in examples:
        first, second = sorted((e.head.source, e.tail.source))
        counts[f"examples_{first}_{second}"] += 1
    counts["sentences_with_examples"] += int(bool(examples))
    return examples


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
            from recon.data_prep import spacy_pipeline

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
            examples = finish_sentence(sentence.sentence_id, tokens, mentions, self.kg, self.exclusion, counts,
                                       self.num_shards)
            results.append((examples, counts))
        return results
