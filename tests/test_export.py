"""``recon export``: a recon checkpoint as a plain Hugging Face directory, loaded without recon installed.

The loader runs in a subprocess whose meta-path guard makes every ``import recon`` fail; it follows
the exported README (markers in the text, tokenizer, concatenated start-marker states) and its
relation vectors must equal recon's own encoder's on the same input.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.formats import InputFormat, render
from recon.models.train.batching import encode_one, word_pieces
from recon.models.nets.checkpoint import save_checkpoint
from recon.models.nets.loading import load_encoder
from recon.orchestration.cli.main import main
from tiny_bert import make_tiny_bert_dir

PLAIN_LOADER = textwrap.dedent('''
    import importlib.abc, json, sys

    class NoRecon(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "recon" or name.startswith("recon."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: recon must not be needed)")
            return None

    sys.meta_path.insert(0, NoRecon())
    try:
        import recon  # noqa: F401
        raise SystemExit("recon is importable: the guard failed")
    except ModuleNotFoundError:
        pass

    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    directory, texts = sys.argv[1], json.loads(sys.argv[2])
    config = AutoConfig.from_pretrained(directory)
    markers = config.recon_relation
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model, info = AutoModel.from_pretrained(directory, output_loading_info=True)
    model.eval()
    out = {"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
           "reps": [], "ids": [], "loaded_recon": any(m == "recon" or m.startswith("recon.") for m in sys.modules)}
    for text in texts:
        enc = tokenizer(text, return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        head = ids.index(tokenizer.convert_tokens_to_ids(markers["head_start"]))
        tail = ids.index(tokenizer.convert_tokens_to_ids(markers["tail_start"]))
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]
        out["reps"].append(torch.cat([hidden[head], hidden[tail]]).tolist())
        out["ids"].append(ids)
    print(json.dumps(out))
''')

EXAMPLES = [
    RelationExample(("john", "lives", "in", "paris", "."), Entity(0, 1), Entity(3, 4), "r"),
    RelationExample(("the", "capital", "of", "france", "is", "paris", "."), Entity(5, 6), Entity(3, 4), "r"),
]


def _recon_reps(bundle):
    """recon's own relation vectors and input ids (C+M, as fine-tuning encodes them)."""
    pieces = word_pieces(bundle.tokenizer, bundle.special)
    reps, ids, texts = [], [], []
    enc = bundle.model.eval()
    for ex in EXAMPLES:
        item = encode_one(ex, InputFormat.CM, pieces, bundle.special, 64, 0)
        with torch.no_grad():
            rep = enc(torch.tensor([item.input_ids]), torch.ones(1, len(item.input_ids), dtype=torch.long),
                      torch.tensor([item.head_pos]), torch.tensor([item.tail_pos]))
        reps.append(rep[0])
        ids.append(list(item.input_ids))
        texts.append(" ".join(render(ex, InputFormat.CM, bundle.special).words))
    return reps, ids, texts


def _plain_load(directory, texts):
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOADER, str(directory), json.dumps(texts)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_export(checkpoint, out):
    assert main(["export", str(checkpoint), "--to", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= names and "recon.json" not in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    bundle = load_encoder(str(checkpoint))
    reps, ids, texts = _recon_reps(bundle)
    plain = _plain_load(out, texts)
    assert not plain["loaded_recon"] and plain["unexpected"] == []
    assert all(k.startswith("pooler.") for k in plain["missing"])  # recon never had a pooler; README says so
    assert plain["ids"] == ids                                       # same tokens, markers atomic
    for mine, theirs in zip(reps, plain["reps"]):
        assert torch.allclose(mine, torch.tensor(theirs), atol=1e-5)
    readme = (out / "README.md").read_text()
    assert bundle.special.head_start in readme and "concatenat" in readme.lower()
    return bundle


def test_export_tiny_bert_with_added_marker_tokens(tmp_path):
    bundle = load_encoder(str(make_tiny_bert_dir(tmp_path)))
    assert bundle.special.head_start == "[E1]"  # no [unusedN] slots: markers are new tokens
    with torch.no_grad():  # a "pre-trained" encoder: weights moved off their initialisation
        for p in bundle.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ckpt = save_checkpoint(tmp_path / "cp", bundle.model, bundle.tokenizer, special=bundle.special,
                           base_encoder="tiny-bert", objective="cp", step=7)
    _check_export(ckpt, tmp_path / "exported")
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["recon_relation"]["objective"] == "cp" and config["recon_relation"]["head_start"] == "[E1]"
    # A second export into the same directory needs --force; a non-checkpoint is a clear error.
    assert main(["export", str(ckpt), "--to", str(tmp_path / "exported")]) == 2
    assert main(["export", str(tmp_path), "--to", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_export_minilm_with_unused_slot_markers(tmp_path):
    bundle = load_encoder("minilm")
    assert bundle.special.head_start == "[unused0]"  # BERT vocabulary: the paper's [unusedN] markers
    ckpt = save_checkpoint(tmp_path / "cp", bundle.model, bundle.tokenizer, special=bundle.special,
                           base_encoder="minilm", objective="cp", step=1)
    _check_export(ckpt, tmp_path / "exported")
