"""Pre-training corpus: Wikipedia-style sentences linked to a knowledge graph (Peng et al., 2020, Sec. 3).

``builder`` (Ray Data) writes shards + ``manifest.json``; ``load_corpus`` reads them back as a
:class:`CorpusIndex` of relation bags and entity-pair groups for ``recon.data_prep.samplers``.
Ray is imported only by ``recon.data_prep.corpus.builder``; importing this package stays light.
"""
from .index import (
    CorpusExample,
    CorpusIndex,
    Mention,
    load_corpus,
    pair_key,
    pair_shard,
    read_manifest,
    shards_for_rank,
)

__all__ = [
    "CorpusExample", "CorpusIndex", "Mention", "load_corpus", "pair_key", "pair_shard",
    "read_manifest", "shards_for_rank",
]
