"""Test-set exclusion: the entity pairs of benchmark dev/test sets that must not appear in pre-training.

Pairs are UNORDERED (stricter than ordered: a sentence holding (B, A) also tells the model about
(A, B)). A benchmark entity pair is keyed by its Wikidata ids when both mentions carry one (Wiki80,
FewRel), else by the normalised mention texts (read from the token span, not the ``name`` field).
All evaluation splits present locally are used: ``dev``, ``val`` (FewRel) and ``test``; missing ones
(Wiki80 has only dev here) are reported, not invented.

The builder records in ``manifest.json`` under ``exclusion.datasets`` exactly what it excluded, per
dataset: the splits, their files and sha256s, and a hash of the excluded pair set.
:func:`check_exclusions` reads that record back: a study may pre-train on a corpus only if every
dataset it evaluates on is recorded as excluded, over the evaluation files it will read now
(:func:`require_exclusions` raises :class:`LeakageError` otherwise, unless leakage is allowed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from recon.core.errors import DatasetNotFound, ReconError
from recon.core.hashing import file_sha256, stable_hash
from recon.data_prep.corpus.index import pair_key, read_manifest
from recon.data_prep.corpus.kg import normalise_name
from recon.data_prep.corpus.linking import Exclusion

EVAL_SPLITS: tuple[str, ...] = ("dev", "val", "test")
EXCLUSION_RECORD_VERSION = 2  # 1 (no "record" key): splits and paths only; 2: + sha256 and pairs_hash


def exclusion_from_examples(examples: Iterable) -> Exclusion:
    """Exclusion pairs of ``RelationExample`` s (ids where both are known, else normalised names)."""
    ids, names = set(), set()
    for ex in examples:
        if ex.head.kb_id and ex.tail.kb_id:
            ids.add(pair_key(ex.head.kb_id, ex.tail.kb_id))
        else:
            head = normalise_name(" ".join(ex.tokens[ex.head.start:ex.head.end]))
            tail = normalise_name(" ".join(ex.tokens[ex.tail.start:ex.tail.end]))
            if head and tail:
                names.add(pair_key(head, tail))
    return Exclusion(frozenset(ids), frozenset(names))


def pairs_hash(exclusion: Exclusion) -> str:
    """Stable hash of an exclusion's pair sets (changes if the pairs or their normalisation change)."""
    return stable_hash({"id_pairs": sorted(exclusion.id_pairs), "name_pairs": sorted(exclusion.name_pairs)})


def exclusion_from_datasets(names: Iterable[str], data_dir: str | Path | None = None) -> tuple[Exclusion, dict]:
    """Union of the evaluation-split pairs of the named datasets, and what was read per dataset.

    The per-dataset report is the manifest's exclusion record: ``splits``, ``missing_splits``,
    ``examples``, ``id_pairs``/``name_pairs`` (counts), ``files`` and ``sha256`` per split,
    ``pairs_hash``.
    """
    from recon.data_prep.registry import load_dataset  # the benchmark loaders; loaded only when excluding

    ids, name_pairs, report = set(), set(), {}
    for name in names:
        dataset = load_dataset(name, data_dir=str(data_dir) if data_dir else None)
        used = [s for s in EVAL_SPLITS if s in dataset.splits]
        part = exclusion_from_examples(ex for s in used for ex in dataset.splits[s])
        ids |= part.id_pairs
        name_pairs |= part.name_pairs
        report[name] = {
            "splits": used,
            "missing_splits": [s for s in EVAL_SPLITS if s in dataset.missing],
            "examples": sum(len(dataset.splits[s]) for s in used),
            "id_pairs": len(part.id_pairs),
            "name_pairs": len(part.name_pairs),
            "files": {s: dataset.files.get(s) for s in used},
            "sha256": {s: file_sha256(dataset.files[s]) for s in used},
            "pairs_hash": pairs_hash(part),
        }
    return Exclusion(frozenset(ids), frozenset(name_pairs)), report


# ---------------------------------------------------------------- checking a built corpus

class LeakageError(ReconError):
    """Pre-training on a corpus that does not exclude the entity pairs of the evaluated datasets."""

    def __init__(self, check: "ExclusionCheck") -> None:
        self.check = check
        self.corpus = check.corpus
        self.missing = list(check.missing)
        self.stale = dict(check.stale)
        problems = []
        if check.missing:
            problems.append("it records no exclusion for " + ", ".join(check.missing))
        for name, why in check.stale.items():
            problems.append(f"its exclusion of {name} is out of date ({why})")
        rebuild = " ".join(check.rebuild_exclude)
        super().__init__(
            f"corpus {check.corpus} may leak evaluation data into pre-training: {'; '.join(problems)}. "
            f"Rebuild it excluding every dataset the study evaluates on: "
            f"`recon corpus build ... --exclude {rebuild} --overwrite`; or, to pre-train on it anyway, "
            "set `allow_leakage: true` in the study spec (or pass --allow-leakage to `recon pretrain`), "
            "which is recorded as a tag and in the result tables."
        )


@dataclass(frozen=True)
class ExclusionCheck:
    """What a corpus manifest records as excluded, against the datasets a study evaluates on.

    ``missing``: required datasets the manifest does not record as excluded at all (a manifest with
    no exclusion record excludes nothing). ``stale``: recorded, but not over the evaluation files
    present now (another split exists now, or a file's sha256 differs), name -> reason.
    ``unverified``: recorded and accepted, but the files could not be compared (an exclusion record
    from before sha256s were kept, or the dataset is not available locally).
    """

    corpus: str
    required: tuple[str, ...]
    recorded: tuple[str, ...]
    missing: tuple[str, ...] = ()
    stale: dict[str, str] = field(default_factory=dict)
    unverified: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing and not self.stale

    @property
    def not_excluded(self) -> list[str]:
        """Required datasets whose entity pairs the corpus is not known to exclude (missing + stale)."""
        return [n for n in self.required if n in self.missing or n in self.stale]

    @property
    def rebuild_exclude(self) -> list[str]:
        """The ``--exclude`` list a rebuild needs: what is recorded now plus what is required."""
        return sorted(set(self.recorded) | set(self.required))

    def error(self) -> LeakageError:
        return LeakageError(self)

    def raise_if_leaky(self) -> "ExclusionCheck":
        if not self.ok:
            raise self.error()
        return self


def _current_eval_files(name: str, data_dir: str | Path | None) -> dict[str, Path] | None:
    """The evaluation-split files of a registered dataset present now; None if it cannot be located."""
    from recon.data_prep.datadir import resolve_dataset_dir
    from recon.data_prep.registry import REGISTRY

    spec = REGISTRY.get(name)
    if spec is None:
        return None
    try:
        directory = resolve_dataset_dir(spec.name, spec.directory, data_dir)
    except DatasetNotFound:
        return None
    from recon.data_prep.loaders import find_data_file

    found = {s: find_data_file(directory / spec.splits[s]) for s in EVAL_SPLITS if s in spec.splits}
    return {s: path for s, path in found.items() if path is not None}  # FILE or FILE.gz, as load_dataset reads


def _stale_reason(record: dict, current: dict[str, Path]) -> str | None:
    recorded_splits = set(record.get("splits", []))
    new = [s for s in current if s not in recorded_splits]
    if new:
        return f"split {', '.join(new)} is available now but was not excluded"
    digests = record.get("sha256", {})
    changed = [s for s, path in current.items() if digests.get(s) != file_sha256(path)]
    if changed:
        return f"{', '.join(str(current[s]) for s in changed)} differs from the file excluded at build time"
    return None


def check_exclusions(directory: str | Path, datasets: Iterable[str], *, data_dir: str | Path | None = None,
                     verify_files: bool = True) -> ExclusionCheck:
    """Which of ``datasets`` (the study's evaluation datasets) the corpus does NOT exclude.

    Reads only ``manifest.json`` and, with ``verify_files``, hashes the datasets' current evaluation
    files (``data_dir`` as for ``load_dataset``; a few MB) to catch an exclusion made against other
    files or fewer splits than are present now.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    record = (manifest.get("exclusion") or {}).get("datasets") or {}
    required = tuple(dict.fromkeys(str(d) for d in datasets))
    missing, stale, unverified = [], {}, []
    for name in required:
        if name not in record:
            missing.append(name)
            continue
        if not verify_files:
            continue
        current = _current_eval_files(name, data_dir)
        if current is None or "sha256" not in record[name]:
            unverified.append(name)
            if current is not None:  # a record without digests can still miss a split present now
                new = [s for s in current if s not in set(record[name].get("splits", []))]
                if new:
                    stale[name] = f"split {', '.join(new)} is available now but was not excluded"
                    unverified.remove(name)
            continue
        reason = _stale_reason(record[name], current)
        if reason:
            stale[name] = reason
    return ExclusionCheck(str(directory), required, tuple(sorted(record)), tuple(missing), stale,
                          tuple(unverified))


def require_exclusions(directory: str | Path, datasets: Iterable[str], *, allow_leakage: bool = False,
                       data_dir: str | Path | None = None) -> ExclusionCheck:
    """:func:`check_exclusions`, raising :class:`LeakageError` unless it passes or ``allow_leakage``."""
    check = check_exclusions(directory, datasets, data_dir=data_dir)
    if not check.ok and not allow_leakage:
        raise check.error()
    return check
