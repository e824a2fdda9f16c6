"""Pre-training corpus: Wikipedia-style sentences linked to a knowledge graph (Peng et al., 2020, Sec. 3).

``builder`` (Ray Data) writes shards + ``manifest.json``; ``load_corpus`` reads them back as a
:class:`CorpusIndex` of relation bags and entity-pair groups for ``recon.data_prep.samplers``.
``corpus_identity`` is a built corpus's content identity (for pre-training stage ids, instead of its
path); ``check_exclusions``/``require_exclusions`` tell whether it excludes the entity pairs of the
datasets a study evaluates on (``LeakageError`` otherwise).
Ray is imported only by ``recon.data_prep.corpus.builder``; importing this package stays light.
"""
from .exclusion import ExclusionCheck, LeakageError, check_exclusions, require_exclusions
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
from .manifest import corpus_identity

__all__ = [
    "CorpusExample", "CorpusIndex", "ExclusionCheck", "LeakageError", "Mention", "check_exclusions",
    "corpus_identity", "load_corpus", "pair_key", "pair_shard", "read_manifest", "require_exclusions",
    "shards_for_rank",
]
