"""Examples -> token ids once -> padded tensor batches.

Encoding (render + word-piece) is the slow part of data loading, and the same split is used by
every epoch, every seed and every trial of a sweep running in one worker process. So encoded
splits are memoised under a key ``(dataset, split, format, tokenizer, max_length, ...)`` chosen by
the caller; batches are then padded only to the longest sequence they contain.

    data = encode_examples(examples, InputFormat.CM, bundle.tokenizer, bundle.special, 100, label2id,
                           cache_key=("semeval", "train_0.1", "C+M", "minilm", 100))
    loader = make_loader(data, 64, shuffle=True, seed=42, collate_fn=Collator(pad_id))
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from recon.data_prep.encoding import WordPieceCache, encode
from recon.data_prep.errors import DataError
from recon.data_prep.example import RelationExample
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

    def truncation_stats(self) -> dict[str, int]:
        """``{"examples", "truncated", "context_split", "entity_truncated"}`` counts, for logging."""
        return {"examples": len(self.items), "truncated": self.n_truncated,
                "context_split": self.n_context_split, "entity_truncated": self.n_entity_truncated}


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
) -> EncodedExample:
    enc = encode(render(example, fmt, special), pieces, max_length)
    return EncodedExample(enc.input_ids, enc.head_pos, enc.tail_pos, label, enc.truncated,
                          enc.entity_truncated, enc.context_split)


def encode_examples(
    examples: Sequence[RelationExample],
    fmt: InputFormat,
    tokenizer,
    special: SpecialTokens,
    max_length: int,
    label2id: Mapping[str, int] | None,
    *,
    cache_key: Hashable | None = None,
) -> EncodedDataset:
    """Encode every example; with ``label2id=None`` labels are -1 (unlabelled / episodic use).

    A label missing from ``label2id`` is a data error naming the example's source and field.
    """
    if cache_key is not None and cache_key in _CACHE:
        _CACHE.move_to_end(cache_key)
        return _CACHE[cache_key]
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
        items.append(encode_one(ex, fmt, pieces, special, max_length, label))
    data = EncodedDataset(items, [ex.source for ex in examples])
    if cache_key is not None:
        _CACHE[cache_key] = data
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return data


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
