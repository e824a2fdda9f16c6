"""Export a recon checkpoint (e.g. a CP-pre-trained encoder) as a plain Hugging Face model directory.

    recon export runs/cp/final --to exported/cp-bert

writes ``config.json``, ``model.safetensors`` (the bare backbone, ``AutoModel`` layout), the
tokenizer with the entity-marker / blank / type tokens registered as special tokens, and a
``README.md`` that says how to build the relation representation without recon:

    tokenizer = AutoTokenizer.from_pretrained(DIR); model = AutoModel.from_pretrained(DIR)

The marker strings are also recorded in ``config.json`` under ``recon_relation`` (plain JSON that
``transformers`` keeps as a config attribute and ignores otherwise). recon's MLM head and its
``recon.json`` are not exported: the directory is an encoder for downstream fine-tuning. recon's
relation encoder never uses BERT's pooler, so the export has none; ``AutoModel`` initialises one
at random (its ``pooler_output`` is meaningless: use the marker positions as below).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from recon.core.errors import ReconError

README = """\
# {name}: a relation encoder exported from recon

Exported from the recon checkpoint `{source}` (objective: {objective}; step: {step}; base encoder: {base}).
A standard Hugging Face model directory: `config.json`, `model.safetensors`, tokenizer files. It needs
only `transformers` (and `torch`):

```python
import torch
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModel.from_pretrained("{name}").eval()
```

## Relation representation (what recon fine-tunes and pre-trains)

1. Put entity markers around the two mentions in the word sequence (recon's "C+M" input format):
   head (subject) `{head_start} ... {head_end}`, tail (object) `{tail_start} ... {tail_end}`, e.g.

       {head_start} Bill Gates {head_end} founded {tail_start} Microsoft {tail_end} .

   The markers are registered special tokens of this tokenizer (never split or lower-cased).
   Other input formats of the paper: OnlyC replaces each marked mention by one blank token
   (`{head_blank}` / `{tail_blank}`), C+T / OnlyT by a type token (`config.recon_relation["types"]`,
   e.g. `{type_example}`), without end markers.
2. Tokenize with this tokenizer (`[CLS] ... [SEP]` are added as usual) and run the model.
3. The representation is the CONCATENATION of the last hidden states at the two START markers:
   `h[{head_start}]` then `h[{tail_start}]` (size 2 x hidden = {rep_size}); with OnlyC / C+T the blank
   or type token takes the start marker's place. Do not use `pooler_output` (the pooler is not
   part of the exported weights and is initialised at random).

```python
text = "{head_start} Bill Gates {head_end} founded {tail_start} Microsoft {tail_end} ."
enc = tokenizer(text, return_tensors="pt")
ids = enc["input_ids"][0].tolist()
head = ids.index(tokenizer.convert_tokens_to_ids("{head_start}"))
tail = ids.index(tokenizer.convert_tokens_to_ids("{tail_start}"))
with torch.no_grad():
    hidden = model(**enc).last_hidden_state[0]
relation = torch.cat([hidden[head], hidden[tail]])   # [{rep_size}]
```

recon tokenizes word by word (as BERT's basic tokenizer splits on white space and punctuation, the
same pieces for ordinary text) and, for inputs longer than its maximum length, keeps a window around
both entities; short inputs give exactly the ids above.
"""


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the plain Hugging Face directory for ``checkpoint`` (a recon checkpoint dir); returns it."""
    from recon.models.nets.checkpoint import load_checkpoint, read_manifest

    source = Path(checkpoint).expanduser()
    out = Path(out_dir).expanduser()
    manifest = read_manifest(source)  # a clear error when it is not a recon checkpoint
    if out.exists() and any(out.iterdir()) and not force:
        raise ReconError(f"{out} exists and is not empty; choose another --to or pass --force")
    bundle = load_checkpoint(source, mlm_head=False)
    backbone, tokenizer, special = bundle.model.backbone, bundle.tokenizer, bundle.special
    # load_checkpoint registered every marker / blank / type token as an added SPECIAL token (atomic,
    # never lower-cased, same ids); save_pretrained writes them into the tokenizer files.
    if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
        raise ReconError(f"{source}: the tokenizer has {len(tokenizer)} tokens but the embeddings only "
                         f"{backbone.get_input_embeddings().num_embeddings} rows")
    backbone.config.recon_relation = {
        "head_start": special.head_start, "head_end": special.head_end,
        "tail_start": special.tail_start, "tail_end": special.tail_end,
        "head_blank": special.head_blank, "tail_blank": special.tail_blank, "types": dict(special.types),
        "representation": "concat(last_hidden_state[head_start], last_hidden_state[tail_start])",
        "objective": manifest.get("objective"), "step": manifest.get("step"),
        "base_encoder": manifest.get("base_encoder"),
    }
    out.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    hidden = int(backbone.config.hidden_size)
    (out / "README.md").write_text(README.format(
        name=out.name, source=source, objective=manifest.get("objective") or "n/a", step=manifest.get("step"),
        base=manifest.get("base_encoder") or "n/a", head_start=special.head_start, head_end=special.head_end,
        tail_start=special.tail_start, tail_end=special.tail_end, head_blank=special.head_blank,
        tail_blank=special.tail_blank, type_example=special.types.get("subj_PERSON", ""), rep_size=2 * hidden),
        encoding="utf-8")
    return out


def describe(out: Path) -> dict:
    """What the command prints: the directory and its files."""
    return {"exported": str(out), "files": sorted(p.name for p in out.iterdir()),
            "relation": json.loads((out / "config.json").read_text())["recon_relation"]["representation"]}


__all__ = ["export_checkpoint", "describe", "README"]
