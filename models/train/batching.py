"""Examples -> token ids once -> padded tensor batches.

Encoding (render + word-piece) is the slow part of data loading, and the same split is used by
every epoch, every seed and every trial of a sweep running in one worker process. So encoded
splits are memoised: in memory per process, under a key the caller chooses, and -- with
``cache_dir`` -- on disk, where every process of the node finds them. :func:`encoding_key` is the
key to use: a content hash of what determines the result (the examples themselves, format, the
tokenizer's full definition and marker tokens, max_length, label ids and the encoding code), so a
hit can never be a different dataset, subset, seed or tokenizer. Batches are then padded only to
the longest sequence they contain.

    key = encoding_key(examples, InputFormat.CM, bundle.tokenizer, bundle.special, 100, label2id)
    data = encode_examples(examples, InputFormat.CM, bundle.tokenizer, bundle.special, 100, label2id,
                           cache_key=key, cache_dir=default_cache_dir())
    loader = make_loader(data, 64, shuffle=True, seed=42, collate_fn=Collator(pad_id))
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from recon.data_prep.encoding import WordPieceCache, encode
from recon.core.errors import DataError
from recon.data_prep.example import RelationExample, examples_digest  # noqa: F401 (re-exported)
from recon.data_prep.formats import InputFormat, render
from recon.data_prep.special_tokens import SpecialTokens


@dataclass(frozen=True)
class EncodedExample:
    input_ids: tuple[int, ...]
    head_pos: int
    tail_pos: int
    label: int
    truncated: bool = False          # longer than max_length: pieces were dropped
    entity_truncated: bool = False   # an entity lost mention pieces / its end marker (see encoding.Encoded)
    context_split: bool = False      # entities further apart than max_length: text between them cut
    marker_cut: bool = False         # ``cut`` truncation: a start marker was cut away (read from a word)


class EncodedDataset(Dataset):
    """A list of :class:`EncodedExample` plus the ``source`` of each (for predictions files)."""

    def __init__(self, items: Sequence[EncodedExample], sources: Sequence[str]) -> None:
        self.items = list(items)
        self.sources = list(sources)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> EncodedExample:
        return self.items[index]

    @property
    def lengths(self) -> list[int]:
        return [len(item.input_ids) for item in self.items]

    @property
    def n_truncated(self) -> int:
        """Examples longer than ``max_length`` (windowed around the entities)."""
        return sum(item.truncated for item in self.items)

    @property
    def n_entity_truncated(self) -> int:
        """Examples where an entity lost pieces: the two entities alone exceed ``max_length``."""
        return sum(item.entity_truncated for item in self.items)

    @property
    def n_context_split(self) -> int:
        """Examples whose entities were further apart than ``max_length``: the text between them was cut."""
        return sum(item.context_split for item in self.items)

    @property
    def n_marker_cut(self) -> int:
        """``cut`` truncation: examples whose relation is read from an ordinary word (a start marker was cut)."""
        return sum(getattr(item, "marker_cut", False) for item in self.items)

    def truncation_stats(self) -> dict[str, int]:
        """``{"examples", "truncated", "context_split", "entity_truncated", "marker_cut"}`` counts, for logging."""
        return {"examples": len(self.items), "truncated": self.n_truncated,
                "context_split": self.n_context_split, "entity_truncated": self.n_entity_truncated,
                "marker_cut": self.n_marker_cut}


_CACHE: "OrderedDict[Hashable, EncodedDataset]" = OrderedDict()
_CACHE_SIZE = 32
_PIECES: dict[int, WordPieceCache] = {}


def word_pieces(tokenizer, special: SpecialTokens) -> WordPieceCache:
    """One word-piece cache per tokenizer object, shared by every split and format."""
    key = id(tokenizer)
    cache = _PIECES.get(key)
    if cache is None or cache.tokenizer is not tokenizer:
        cache = _PIECES[key] = WordPieceCache(tokenizer, special.all_tokens())
    return cache


def _where(source: str) -> dict:
    """``path:line`` / ``path#record`` (RelationExample.source) -> DataError location arguments."""
    path, sep, line = source.rpartition(":")
    if sep and line.isdigit():
        return {"path": path, "line": int(line)}
    path, sep, record = source.partition("#")
    return {"path": path or None, "record": record} if sep else {"path": source or None}


def encode_one(
    example: RelationExample,
    fmt: InputFormat,
    pieces: WordPieceCache,
    special: SpecialTokens,
    max_length: int,
    label: int,
    *,
    truncation: str = "window",
    placeholder_markers: bool = False,
) -> EncodedExample:
    """One example rendered in ``fmt`` and encoded; ``truncation`` / ``placeholder_markers`` are protocol points."""
    enc = encode(render(example, fmt, special, placeholder_markers=placeholder_markers), pieces, max_length,
                 truncation)
    return EncodedExample(enc.input_ids, enc.head_pos, enc.tail_pos, label, enc.truncated,
                          enc.entity_truncated, enc.context_split, enc.marker_cut)


_CODE_DIGEST: str | None = None
_TOKENIZER_DIGESTS: dict[int, tuple[object, str]] = {}
DISK_SUBDIR = "encoded"  # under the node cache (recon.core.storage.default_cache_dir())


def _code_digest() -> str:
    """Hash of the modules whose code decides the token ids (a disk cache must not outlive them)."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        import sys

        from recon.data_prep import encoding, formats, special_tokens

        h = hashlib.sha256()
        for module in (encoding, formats, special_tokens, sys.modules[__name__]):
            h.update(Path(module.__file__).read_bytes())
        _CODE_DIGEST = h.hexdigest()
    return _CODE_DIGEST


def tokenizer_digest(tokenizer) -> str:
    """Hash of a tokenizer's whole definition (vocabulary, normalisation, added tokens); memoised per object."""
    memo = _TOKENIZER_DIGESTS.get(id(tokenizer))
    if memo is not None and memo[0] is tokenizer and memo[1][0] == len(tokenizer):
        return memo[1][1]
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
        h.update(repr(sorted((k, str(v)) for k, v in getattr(tokenizer, "init_kwargs", {}).items())).encode())
    h.update(repr(tokenizer.all_special_tokens).encode())
    digest = h.hexdigest()
    _TOKENIZER_DIGESTS[id(tokenizer)] = (tokenizer, (len(tokenizer), digest))
    return digest


def encoding_key(
    examples: Sequence[RelationExample],
    fmt: InputFormat,
    tokenizer,
    special: SpecialTokens,
    max_length: int,
    label2id: Mapping[str, int] | None,
    *,
    truncation: str = "window",
    placeholder_markers: bool = False,
) -> str:
    """The content hash an encoded split is cached under (in memory and on disk)."""
    h = hashlib.sha256()
    for part in (examples_digest(examples), fmt.value, tokenizer_digest(tokenizer), repr(special), str(max_length),
                 repr(sorted(label2id.items())) if label2id is not None else "-", _code_digest(), truncation,
                 str(placeholder_markers)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


DISK_CACHE_DIR: str | None = None  # set by the Tune trainable to the node cache; else $RECON_CACHE_DIR


def encoded_cache_dir() -> str | None:
    """Where encoded splits are kept on disk: :data:`DISK_CACHE_DIR`, else ``$RECON_CACHE_DIR``, else nowhere."""
    return DISK_CACHE_DIR or os.environ.get("RECON_CACHE_DIR") or None


def _disk_path(cache_dir: str | os.PathLike, key: Hashable) -> Path | None:
    if not isinstance(key, str) or not key.isalnum():
        return None  # only content-hash keys go to disk: a caller's tuple key is not stable enough
    return Path(cache_dir) / DISK_SUBDIR / key[:2] / f"{key}.pkl"


def _read_disk(path: Path, n: int) -> "EncodedDataset | None":
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError, TypeError):
        return None
    return data if isinstance(data, EncodedDataset) and len(data) == n else None


def _write_disk(path: Path, data: "EncodedDataset") -> None:
    """Atomic: written beside, then renamed; a process racing on the same key writes the same bytes."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:  # a read-only or full cache only costs the next process an encoding
        pass


def encode_examples(
    examples: Sequence[RelationExample],
    fmt: InputFormat,
    tokenizer,
    special: SpecialTokens,
    max_length: int,
    label2id: Mapping[str, int] | None,
    *,
    cache_key: Hashable | None = None,
    cache_dir: str | os.PathLike | None = None,
    truncation: str = "window",
    placeholder_markers: bool = False,
) -> EncodedDataset:
    """Encode every example; with ``label2id=None`` labels are -1 (unlabelled / episodic use).

    A label missing from ``label2id`` is a data error naming the example's source and field.
    ``cache_key`` memoises the result in this process; with ``cache_dir`` and a key from
    :func:`encoding_key` also on disk (``<cache_dir>/encoded/``), shared by the node's processes.
    The returned dataset may be shared: treat it as read-only.
    """
    if cache_key is not None and cache_key in _CACHE:
        _CACHE.move_to_end(cache_key)
        return _CACHE[cache_key]
    disk = _disk_path(cache_dir, cache_key) if cache_dir is not None and cache_key is not None else None
    if disk is not None and disk.is_file():
        data = _read_disk(disk, len(examples))
        if data is not None:
            _remember(cache_key, data)
            return data
    pieces = word_pieces(tokenizer, special)
    items = []
    for ex in examples:
        if label2id is None:
            label = -1
        elif ex.label in label2id:
            label = label2id[ex.label]
        else:
            raise DataError(f"label {ex.label!r} is not among the dataset's {len(label2id)} labels",
                            field="relation", **_where(ex.source))
        items.append(encode_one(ex, fmt, pieces, special, max_length, label, truncation=truncation,
                                placeholder_markers=placeholder_markers))
    data = EncodedDataset(items, [ex.source for ex in examples])
    if cache_key is not None:
        _remember(cache_key, data)
    if disk is not None:
        _write_disk(disk, data)
    return data


def _remember(key: Hashable, data: EncodedDataset) -> None:
    _CACHE[key] = data
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)


def pad_batch(items: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of the batch; attention mask 1 on real tokens."""
    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it.input_ids)
        ids[row, :n] = torch.tensor(it.input_ids, dtype=torch.long)
        mask[row, :n] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "head_pos": torch.tensor([it.head_pos for it in items], dtype=torch.long),
        "tail_pos": torch.tensor([it.tail_pos for it in items], dtype=torch.long),
    }


class Collator:
    """DataLoader ``collate_fn``: padded inputs plus ``labels`` (a class, so it pickles for workers)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        batch = pad_batch(items, self.pad_id)
        batch["labels"] = torch.tensor([it.label for it in items], dtype=torch.long)
        return batch
