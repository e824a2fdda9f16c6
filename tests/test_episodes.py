"""N-way K-shot episodes on the real FewRel files: shape, determinism, sharding, clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from recon.data_prep.episodes import Episode, EpisodeSampler
from recon.core.errors import ReconError

FEWREL = Path("/work/shared/datasets/fewrel")


@pytest.fixture(scope="module")
def pubmed() -> dict[str, list[tuple[str, int]]]:
    """val_pubmed.json as relation -> [(relation, instance index)]: hashable, traceable items."""
    data = json.loads((FEWREL / "val_pubmed.json").read_text())
    return {rel: [(rel, i) for i in range(len(items))] for rel, items in data.items()}


def _key(ep: Episode) -> tuple:
    return ep.relations, tuple(map(tuple, ep.support)), tuple(ep.query), tuple(ep.query_labels)


@pytest.mark.parametrize("n,k,q", [(5, 1, 1), (5, 5, 1), (10, 1, 2), (10, 5, 3)])
def test_episode_shape_and_labels(pubmed, n, k, q):
    sampler = EpisodeSampler(pubmed, n_way=n, k_shot=k, q_query=q, seed=3)
    for ep in sampler.episodes(0, 20):
        assert len(ep.relations) == len(set(ep.relations)) == n
        assert [len(s) for s in ep.support] == [k] * n
        assert all(item[0] == rel for rel, shots in zip(ep.relations, ep.support) for item in shots)
        assert len(ep.query) == len(ep.query_labels) == n * q
        assert all(ep.relations[label] == item[0] for item, label in zip(ep.query, ep.query_labels))
        drawn = [x for shots in ep.support for x in shots] + ep.query
        assert len(drawn) == len(set(drawn))  # no instance both support and query


def test_determinism_and_sharding(pubmed):
    a = EpisodeSampler(pubmed, 5, 5, seed=42)
    b = EpisodeSampler(dict(reversed(list(pubmed.items()))), 5, 5, seed=42)  # dict order must not matter
    sequential = [_key(ep) for ep, _ in zip(a, range(40))]
    assert sequential == [_key(ep) for ep in b.episodes(0, 40)]
    shards = [_key(ep) for start in range(0, 40, 13) for ep in a.episodes(start, min(start + 13, 40))]
    assert shards == sequential
    assert _key(a.episode(37)) == sequential[37]  # random access, independent of earlier draws
    assert len(set(sequential)) == 40
    other = EpisodeSampler(pubmed, 5, 5, seed=43)
    assert [_key(ep) for ep in other.episodes(0, 40)] != sequential


def test_all_relations_are_used_over_many_episodes():
    data = json.loads((FEWREL / "val_wiki.json").read_text())
    sampler = EpisodeSampler(data, n_way=5, k_shot=1, seed=0)
    seen = {rel for ep in sampler.episodes(0, 200) for rel in ep.relations}
    assert seen == set(data) and len(seen) == 16
    ep = sampler.episode(0)
    assert set(ep.query[0]) == {"tokens", "h", "t"}  # the raw FewRel instances pass through


def test_clear_errors(pubmed):
    with pytest.raises(ReconError, match="11 relations.*has 10"):
        EpisodeSampler(pubmed, n_way=11, k_shot=1)
    few = {rel: items[:5] for rel, items in pubmed.items()}
    few["P1"] = few.pop(next(iter(few)))[:3]
    with pytest.raises(ReconError, match=r"need 6 instances.*'P1' \(3\)") as err:
        EpisodeSampler(few, n_way=5, k_shot=5, q_query=1)
    assert "10 relation(s)" in str(err.value)
    EpisodeSampler(few, n_way=5, k_shot=2, q_query=1)  # 3 instances suffice for 2 + 1
