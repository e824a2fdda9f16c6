"""Pre-training corpus: Wikipedia-style sentences linked to a knowledge graph (Peng et al., 2020, Sec. 3).

``builder.build_corpus`` (Ray Data + spaCy + KG linking) writes shards + ``manifest.json`` from a
``config.CorpusBuildConfig``; ``demo_from_benchmarks.run_demo`` rebuilds FewRel val_wiki + Wiki80 dev
from raw text with it (``config.CorpusDemoConfig``). ``load_corpus`` reads a built corpus back as a
:class:`CorpusIndex` of relation bags and entity-pair groups for ``recon.data_prep.samplers``
(``shards_for_rank`` splits the shards over pre-training workers). ``corpus_identity`` is a built
corpus's content identity (for pre-training stage ids, instead of its path);
``check_exclusions``/``require_exclusions`` tell whether it excludes the entity pairs of the
datasets a study evaluates on (``LeakageError`` otherwise).
Only ``builder`` and ``demo_from_benchmarks`` use Ray; importing this package (and ``config``) stays light.
"""
from recon.data_prep.corpus.exclusion import ExclusionCheck, LeakageError, check_exclusions, require_exclusions
from recon.data_prep.corpus.index import (
    CorpusExample,
    CorpusIndex,
    Mention,
    load_corpus,
    pair_key,
    pair_shard,
    read_manifest,
    shards_for_rank,
)
from recon.data_prep.corpus.manifest import corpus_identity

__all__ = [
    "CorpusExample", "CorpusIndex", "ExclusionCheck", "LeakageError", "Mention", "check_exclusions",
    "corpus_identity", "load_corpus", "pair_key", "pair_shard", "read_manifest", "require_exclusions",
    "shards_for_rank",
]
