"""N-way K-shot episode sampling for few-shot evaluation (FewRel), reproducible and shardable.

Episode ``i`` is drawn from its own generator seeded with ``(seed, i)``, so episode 7,531 is the same
whether it is the first episode a worker draws or the last; 10,000 evaluation episodes can be split
across workers as index ranges and the union is identical to a single sequential run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from recon.core.errors import ReconError

T = TypeVar("T")


@dataclass(frozen=True)
class Episode(Generic[T]):
    """``relations[j]`` is class j; ``support[j]`` its K shots; ``query_labels[q]`` indexes ``relations``."""

    relations: tuple[str, ...]
    support: list[list[T]]
    query: list[T]
    query_labels: list[int]
    index: int = -1


class EpisodeSampler(Generic[T]):
    """Draws N relations, then K support + Q query instances of each, without replacement."""

    def __init__(
        self,
        examples_by_relation: Mapping[str, Sequence[T]],
        n_way: int,
        k_shot: int,
        q_query: int = 1,
        seed: int = 0,
    ) -> None:
        if n_way < 1 or k_shot < 1 or q_query < 0:
            raise ReconError(f"invalid episode shape: n_way={n_way}, k_shot={k_shot}, q_query={q_query}")
        if len(examples_by_relation) < n_way:
            raise ReconError(f"{n_way}-way episodes need at least {n_way} relations; the data has "
                             f"{len(examples_by_relation)}")
        need = k_shot + q_query
        short = {rel: len(xs) for rel, xs in examples_by_relation.items() if len(xs) < need}
        if short:
            listed = ", ".join(f"{rel!r} ({n})" for rel, n in sorted(short.items())[:10])
            raise ReconError(f"{k_shot}-shot episodes with {q_query} queries per relation need {need} instances "
                             f"of every relation; {len(short)} relation(s) have fewer: {listed}")
        self.relations: tuple[str, ...] = tuple(sorted(examples_by_relation))  # order-independent of dict
        self.examples = {rel: list(examples_by_relation[rel]) for rel in self.relations}
        self.n_way, self.k_shot, self.q_query, self.seed = n_way, k_shot, q_query, seed

    def episode(self, index: int) -> Episode[T]:
        """Episode ``index``: a pure function of (data, shape, seed, index)."""
        rng = np.random.default_rng([self.seed, index])
        chosen = rng.choice(len(self.relations), size=self.n_way, replace=False)
        relations = tuple(self.relations[i] for i in chosen)
        support: list[list[T]] = []
        query: list[T] = []
        labels: list[int] = []
        for label, rel in enumerate(relations):
            pool = self.examples[rel]
            picked = rng.choice(len(pool), size=self.k_shot + self.q_query, replace=False)
            support.append([pool[i] for i in picked[: self.k_shot]])
            query.extend(pool[i] for i in picked[self.k_shot:])
            labels.extend([label] * self.q_query)
        order = rng.permutation(len(query))  # queries do not arrive grouped by class
        return Episode(relations, support, [query[i] for i in order], [labels[i] for i in order], index)

    def episodes(self, start: int, stop: int) -> Iterator[Episode[T]]:
        """Episodes ``start .. stop-1`` (one shard of an evaluation)."""
        return (self.episode(i) for i in range(start, stop))

    def __iter__(self) -> Iterator[Episode[T]]:
        i = 0
        while True:
            yield self.episode(i)
            i += 1
