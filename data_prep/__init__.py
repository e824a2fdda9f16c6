"""Data preparation: raw benchmark files -> validated examples -> input formats -> splits -> token ids.

Nothing here imports ``orchestration``; only ``transformers`` (for tokenizers) and, where a
dataset lacks entity types, spaCy are needed beyond the standard library.
"""
