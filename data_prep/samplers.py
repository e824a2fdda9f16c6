"""CP and MTB pair samplers over a built corpus, with entity blanking (Peng et al., 2020, Sec. 3).

Torch-free (numpy only) so that they can be tested and reused without a model. Each sampler yields
batches of pairs; a pair holds two :class:`Draw` s, each an index into ``CorpusIndex.examples`` plus
the blanking decisions to pass on to ``recon.data_prep.formats.render(..., blank_head=, blank_tail=)``.

Usage (one worker of a distributed run)::

    index = load_corpus(d, shard_ids=shards_for_rank(manifest["num_shards"], rank, world))
    sampler = CPSampler(index, pairs_per_batch=1024, p_blank=0.7, seed=7, rank=rank, world_size=world)
    for batch in sampler:          # endless; sampler.epoch / sampler.step say where it is
        ...
    ckpt["sampler"] = sampler.state_dict()   # later: sampler.load_state_dict(ckpt["sampler"])

Why the choices:
- Randomness: batch ``step`` of ``epoch`` on ``rank`` uses ``numpy.random.default_rng([seed, epoch,
  rank, step])``. A batch is a pure function of those four numbers, so a resumed run (``step``
  restored by ``load_state_dict``) continues the very same stream with no replay, and ranks draw
  independent streams.
- Blanking: every time a sentence is drawn, head and tail are blanked independently with
  probability ``p_blank``; the same sentence drawn in another batch or epoch gets fresh decisions
  (the authors decided once per sentence for all epochs).
- Rows versus sentences: the corpus writes one row per (ordered entity pair, KG relation) of a
  sentence, so one sentence is often several rows. A "sentence" here is a token sequence
  (``CorpusIndex.text_ids``). A positive pair is always two DIFFERENT sentences (CP: two sentences
  of one relation bag; MTB: two sentences of one ordered entity pair -- a pair seen in a single
  sentence, however many rows it has, has no positive), and NO SENTENCE OCCURS TWICE IN ONE BATCH,
  for CP and MTB alike: the same sentence with another entity pair or relation would be a trivially
  easy in-batch negative (or a self-positive). Two rows of one text with different mention spans
  are therefore never paired either.
- Sharding: worker ``rank`` samples only examples whose ``shard % world_size == rank``. Shards are
  assigned by a hash of the unordered entity pair (``recon.data_prep.corpus.pair_shard``), so ranks see
  DISJOINT rows and every MTB positive pair stays within one rank. Loading only the rank's
  shards (``shards_for_rank``) or the global index gives the same examples and the same stream.
  ``partition=False`` instead samples the whole given index on every rank (independent streams,
  overlapping sentences). The one-sentence-per-batch rule holds per rank: a sentence whose rows
  carry different entity pairs can live in two ranks' shards, and then meet itself in a batch of
  negatives gathered across workers (only sharding by sentence would prevent that).
- Nothing crashes on small data: CP skips relations with fewer than 2 distinct sentences, MTB
  entity pairs with fewer than 2 distinct sentences have no positive, MTB falls back from hard to
  easy negatives; when the sentences left unused in a batch cannot form the next pair, the pair is
  skipped, so a batch can hold FEWER than ``pairs_per_batch`` pairs (a CP batch has at least one,
  an MTB batch can be empty). All of it is counted in ``stats``: ``skipped_relations``,
  ``skipped_sentences``, ``skipped_rows``, ``relation_exhausted`` (a drawn relation had no two
  unused sentences left in this batch; another relation was drawn), ``pairs_skipped`` (CP),
  ``pairs_without_positive``, ``positive_skipped``, ``hard_fallback_to_easy``, ``negative_skipped``.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from recon.data_prep.corpus.index import CorpusIndex, pair_key
from recon.core.defaults import P_BLANK
from recon.core.errors import ReconError


@dataclass(frozen=True)
class Draw:
    """One drawn sentence: index into ``CorpusIndex.examples`` and this draw's blanking decisions."""

    index: int
    blank_head: bool
    blank_tail: bool


@dataclass(frozen=True)
class CPPair:
    """A CP positive: two distinct sentences from the bag of ``relation``."""

    a: Draw
    b: Draw
    relation: str


@dataclass(frozen=True)
class MTBPair:
    """An MTB pair with its target: 1 = same entity pair; 0 = ``hard`` (one shared entity) or ``easy``."""

    a: Draw
    b: Draw
    target: int
    kind: str


class _PairSampler:
    """Shared seeding, partitioning, blanking, epoch/step bookkeeping and state for both samplers."""

    kind = "base"

    def __init__(
        self,
        index: CorpusIndex,
        pairs_per_batch: int,
        *,
        p_blank: float = P_BLANK,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        partition: bool = True,
        steps_per_epoch: int | None = None,
        max_attempts: int = 32,
    ) -> None:
        if pairs_per_batch < 1:
            raise ValueError("pairs_per_batch must be >= 1")
        if not 0.0 <= p_blank <= 1.0:
            raise ValueError(f"p_blank must be in [0, 1], got {p_blank}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.index = index
        self.pairs_per_batch = int(pairs_per_batch)
        self.p_blank = float(p_blank)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.partition = bool(partition)
        self.max_attempts = int(max_attempts)
        self.text = index.text_ids
        self.epoch = 0
        self.step = 0
        self.stats: Counter = Counter()
        self.allowed = self._allowed_mask()
        self._steps_per_epoch = steps_per_epoch

    def _allowed_mask(self) -> np.ndarray:
        if not self.partition or self.world_size == 1:
            return np.ones(len(self.index), dtype=bool)
        if self.world_size > self.index.num_shards:
            raise ReconError(
                f"the corpus has {self.index.num_shards} shards but there are {self.world_size} workers: "
                f"rebuild it with --shards {self.world_size} or more, or use partition=False"
            )
        return (self.index.shard_array % self.world_size) == self.rank

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch: by default enough to draw every usable sentence about once."""
        if self._steps_per_epoch is not None:
            return int(self._steps_per_epoch)
        return max(1, math.ceil(self.num_sentences / (2 * self.pairs_per_batch)))

    @property
    def num_sentences(self) -> int:
        """Distinct sentences (texts) this sampler draws from (counted once, then cached)."""
        if getattr(self, "_num_sentences", None) is None:
            self._num_sentences = self._count_sentences()
        return self._num_sentences

    def _count_sentences(self) -> int:
        return _num_texts(self.text, np.flatnonzero(self.allowed))

    def rng(self, epoch: int, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, self.rank, step])

    def _draw(self, rng: np.random.Generator, i: int) -> Draw:
        blank = rng.random(2) < self.p_blank
        return Draw(int(i), bool(blank[0]), bool(blank[1]))

    def _pick(self, rng: np.random.Generator, rows: np.ndarray, used: set, also: int = -1) -> int | None:
        """A uniformly drawn row of ``rows`` whose sentence is neither in ``used`` nor ``also``.

        Rejection sampling first (cheap when most rows qualify), then the exact candidate list;
        None when no row qualifies.
        """
        n = len(rows)
        if n == 0:
            return None
        for _ in range(self.max_attempts):
            r = int(rows[rng.integers(n)])
            t = int(self.text[r])
            if t != also and t not in used:
                return r
        texts = self.text[rows]
        ok = texts != also
        if used:
            ok &= ~np.isin(texts, np.fromiter(used, dtype=np.int64, count=len(used)))
        candidates = rows[ok]
        return int(candidates[rng.integers(len(candidates))]) if len(candidates) else None

    def _batch(self, rng: np.random.Generator) -> list:
        raise NotImplementedError

    def next_batch(self) -> list:
        """The batch at (epoch, step); then advance, rolling into the next epoch when due."""
        batch = self._batch(self.rng(self.epoch, self.step))
        self.step += 1
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        return batch

    def __iter__(self) -> Iterator[list]:
        while True:
            yield self.next_batch()

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.step = int(epoch), 0

    def state_dict(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "pairs_per_batch": self.pairs_per_batch, "p_blank": self.p_blank,
                "epoch": self.epoch, "step": self.step, "stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("kind", "seed", "rank", "world_size", "pairs_per_batch", "p_blank"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state.get(key)!r} but this sampler has "
                                 f"{getattr(self, key)!r}; a resumed run must use the same settings")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.stats = Counter(state.get("stats", {}))


def _num_texts(text: np.ndarray, rows: np.ndarray) -> int:
    return int(len(np.unique(text[rows])))


class CPSampler(_PairSampler):
    """Contrastive pre-training: a relation drawn in proportion to its bag size (rows), then two
    rows of that bag with different sentences, neither used yet in this batch. A batch of N pairs =
    2N distinct sentences; the loss treats all other sentences of the (global) batch as negatives,
    and can mask same-relation pairs using ``CPPair.relation``. A relation whose bag has no two
    unused sentences left is set aside for the rest of the batch and another one drawn
    (``relation_exhausted``); when none is left the batch ends short (``pairs_skipped``).
    """

    kind = "cp"

    def __init__(self, index: CorpusIndex, pairs_per_batch: int, **kwargs) -> None:
        super().__init__(index, pairs_per_batch, **kwargs)
        relations, bags = [], []
        for relation in index.relations:
            bag = index.bags[relation]
            bag = bag[self.allowed[bag]]
            if _num_texts(self.text, bag) < 2:
                self.stats["skipped_relations"] += 1
                self.stats["skipped_sentences"] += _num_texts(self.text, bag)
                self.stats["skipped_rows"] += int(len(bag))
                continue
            relations.append(relation)
            bags.append(bag)
        if not bags:
            raise ReconError(f"no relation has 2 or more sentences (distinct texts) on rank {self.rank} of "
                             f"{self.world_size}: CP cannot form a positive pair")
        self.relations = tuple(relations)
        self.bags = bags
        sizes = np.asarray([len(b) for b in bags], dtype=np.float64)
        self.relation_probs = sizes / sizes.sum()

    def _count_sentences(self) -> int:
        return _num_texts(self.text, np.concatenate(self.bags))

    def _pair_from(self, rng: np.random.Generator, r: int, used: set) -> tuple[int, int] | None:
        bag = self.bags[r]
        a = self._pick(rng, bag, used)
        if a is None:
            return None
        b = self._pick(rng, bag, used, also=int(self.text[a]))
        return None if b is None else (a, b)

    def _batch(self, rng: np.random.Generator) -> list[CPPair]:
        chosen = rng.choice(len(self.bags), size=self.pairs_per_batch, p=self.relation_probs)
        exhausted = np.zeros(len(self.bags), dtype=bool)
        used: set[int] = set()
        pairs: list[CPPair] = []
        for r in chosen:
            r = int(r)
            found = None if exhausted[r] else self._pair_from(rng, r, used)
            while found is None:
                if not exhausted[r]:
                    exhausted[r] = True
                    self.stats["relation_exhausted"] += 1
                live = np.where(exhausted, 0.0, self.relation_probs)
                if live.sum() <= 0.0:
                    break
                r = int(rng.choice(len(self.bags), p=live / live.sum()))
                found = self._pair_from(rng, r, used)
            if found is None:
                self.stats["pairs_skipped"] += self.pairs_per_batch - len(pairs)
                break
            a, b = found
            used.update((int(self.text[a]), int(self.text[b])))
            pairs.append(CPPair(self._draw(rng, a), self._draw(rng, b), self.relations[r]))
        return pairs


class MTBSampler(_PairSampler):
    """Matching the blanks: N/2 positive pairs (same ordered entity pair, two different sentences)
    and N/2 negatives, no sentence twice in the batch. A negative first tries a hard one (exactly
    one shared entity) with probability ``hard_negative_rate``, falls back to an easy one (no
    shared entity), and is skipped if neither exists among the sentences still unused in the
    batch; ``stats`` counts each case. An ordered entity pair whose rows are all one sentence (e.g.
    one sentence, two KG relations) is no positive group (``pairs_without_positive``).
    """

    kind = "mtb"

    def __init__(self, index: CorpusIndex, pairs_per_batch: int, *, hard_negative_rate: float = 1.0,
                 max_attempts: int = 32, **kwargs) -> None:
        super().__init__(index, pairs_per_batch, max_attempts=max_attempts, **kwargs)
        self.hard_negative_rate = float(hard_negative_rate)
        self.pool = np.flatnonzero(self.allowed)
        if len(self.pool) == 0:
            raise ReconError(f"rank {self.rank} of {self.world_size} owns no sentence of this corpus")
        self.groups: list[np.ndarray] = []
        anchors, group_of = [], []
        for pair in sorted(index.pairs):
            group = index.pairs[pair]
            group = group[self.allowed[group]]
            if len(group) == 0:
                continue
            if _num_texts(self.text, group) >= 2:
                anchors.append(group)
                group_of.append(np.full(len(group), len(self.groups), dtype=np.int64))
                self.groups.append(group)
            else:
                self.stats["pairs_without_positive"] += 1
        self.anchors = np.concatenate(anchors) if anchors else np.empty(0, dtype=np.int64)
        self.anchor_group = np.concatenate(group_of) if group_of else np.empty(0, dtype=np.int64)
        self.by_entity = {e: idx[self.allowed[idx]] for e, idx in index.by_entity.items()}
        unordered: Counter = Counter(pair_key(*index[i].pair) for i in self.pool)
        self.unordered_counts = unordered

    def _entities(self, i: int) -> tuple[str, str]:
        return self.index[i].pair

    def _positive(self, rng: np.random.Generator, used: set) -> MTBPair | None:
        """An anchor row drawn uniformly among those with a partner left, then a partner row of the
        same ordered pair from another unused sentence."""
        if len(self.anchors) == 0:
            return None
        for _ in range(self.max_attempts):
            k = int(rng.integers(len(self.anchors)))
            a = int(self.anchors[k])
            if int(self.text[a]) in used:
                continue
            b = self._pick(rng, self.groups[int(self.anchor_group[k])], used, also=int(self.text[a]))
            if b is not None:
                return MTBPair(self._draw(rng, a), self._draw(rng, b), 1, "positive")
        # exact: anchors whose group still has 2 or more unused sentences
        texts = self.text[self.anchors]
        free = ~np.isin(texts, np.fromiter(used, dtype=np.int64, count=len(used))) if used \
            else np.ones(len(texts), dtype=bool)
        distinct = np.unique(np.stack([self.anchor_group[free], texts[free]]), axis=1)
        groups, counts = np.unique(distinct[0], return_counts=True)
        eligible = np.flatnonzero(free & np.isin(self.anchor_group, groups[counts >= 2]))
        if len(eligible) == 0:
            return None
        k = int(eligible[rng.integers(len(eligible))])
        a = int(self.anchors[k])
        b = self._pick(rng, self.groups[int(self.anchor_group[k])], used, also=int(self.text[a]))
        return MTBPair(self._draw(rng, a), self._draw(rng, b), 1, "positive")

    def _hard(self, rng: np.random.Generator, a: int, used: set) -> int | None:
        h, t = self._entities(a)
        eh, et = self.by_entity.get(h, np.empty(0, np.int64)), self.by_entity.get(t, np.empty(0, np.int64))
        valid = len(eh) + len(et) - 2 * self.unordered_counts.get(pair_key(h, t), 0)
        if valid <= 0:
            return None
        ends, ta = {h, t}, int(self.text[a])
        for _ in range(self.max_attempts):  # uniform over valid ones: each appears once in eh + et
            k = int(rng.integers(len(eh) + len(et)))
            c = int(eh[k] if k < len(eh) else et[k - len(eh)])
            tc = int(self.text[c])
            if tc != ta and tc not in used and len(ends & set(self._entities(c))) == 1:
                return c
        return self._pick(rng, np.setxor1d(eh, et), used, also=ta)

    def _easy(self, rng: np.random.Generator, a: int, used: set) -> int | None:
        ends, ta = set(self._entities(a)), int(self.text[a])
        for _ in range(self.max_attempts):
            c = int(self.pool[rng.integers(len(self.pool))])
            tc = int(self.text[c])
            if tc != ta and tc not in used and not ends & set(self._entities(c)):
                return c
        touching = np.concatenate([self.by_entity.get(e, np.empty(0, np.int64)) for e in ends])
        return self._pick(rng, np.setdiff1d(self.pool, touching), used, also=ta)

    def _negative(self, rng: np.random.Generator, used: set) -> MTBPair | None:
        a = self._pick(rng, self.pool, used)
        if a is None:
            return None
        if rng.random() < self.hard_negative_rate:
            b = self._hard(rng, a, used)
            if b is not None:
                return MTBPair(self._draw(rng, a), self._draw(rng, b), 0, "hard")
            self.stats["hard_fallback_to_easy"] += 1
        b = self._easy(rng, a, used)
        if b is None:
            return None
        return MTBPair(self._draw(rng, a), self._draw(rng, b), 0, "easy")

    def _batch(self, rng: np.random.Generator) -> list[MTBPair]:
        n_pos = self.pairs_per_batch // 2
        used: set[int] = set()
        batch: list[MTBPair] = []
        for k in range(self.pairs_per_batch):
            positive = k < n_pos
            pair = self._positive(rng, used) if positive else self._negative(rng, used)
            if pair is None:
                self.stats["positive_skipped" if positive else "negative_skipped"] += 1
                continue
            used.update((int(self.text[pair.a.index]), int(self.text[pair.b.index])))
            batch.append(pair)
        return batch
