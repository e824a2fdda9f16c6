"""Checkpoints: safetensors + JSON round trip, tied weights, atomic replace, no pickle ever loaded."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from recon.core.errors import ReconError
from recon.data_prep.special_tokens import SpecialTokens
from recon.models.nets.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint
from recon.models.nets.loading import load_encoder
from tiny_bert import make_tiny_bert_dir


def _inputs(bundle):
    tok = bundle.tokenizer
    words = [bundle.special.head_start, "john", bundle.special.head_end, "lives", "in",
             bundle.special.tail_start, "paris", bundle.special.tail_end, "."]
    ids = tok.convert_tokens_to_ids([tok.cls_token, *words, tok.sep_token])
    ids = torch.tensor([ids, ids[:6] + [tok.pad_token_id] * (len(ids) - 6)])
    mask = (ids != tok.pad_token_id).long()
    mask[1, :6] = 1
    return ids, mask, torch.tensor([1, 1]), torch.tensor([6, 4])


def _outputs(bundle):
    enc = bundle.model.eval()
    with torch.no_grad():
        rep, seq = enc.encode(*_inputs(bundle))
        return rep, (enc.mlm_logits(seq) if enc.has_mlm_head else None)


def test_round_trip_with_added_tokens_and_tied_mlm_head(tmp_path):
    bundle = load_encoder(str(make_tiny_bert_dir(tmp_path, mlm=True)), mlm_head=True)
    with torch.no_grad():  # make every weight differ from any fresh init
        for p in bundle.model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    rep, logits = _outputs(bundle)
    out = save_checkpoint(tmp_path / "ckpt", bundle.model, bundle.tokenizer,
                          extra={"objective": "cp", "step": 7, "lr": 3e-5}, base_encoder="tiny")
    manifest = json.loads((out / "recon.json").read_text())
    assert manifest["format_version"] == 1 and manifest["has_mlm_head"] is True
    assert manifest["objective"] == "cp" and manifest["step"] == 7 and manifest["base_encoder"] == "tiny"
    assert manifest["extra"]["lr"] == 3e-5
    assert manifest["special_tokens"]["head_start"] == "[E1]"
    assert manifest["tied_weights"]["mlm_head.predictions.decoder.weight"] == \
        "backbone.embeddings.word_embeddings.weight"
    assert {p.suffix for p in out.iterdir()} <= {".json", ".txt", ".safetensors"}

    assert load_encoder(str(out)).model.mlm_head is None  # fine-tuning drops the pre-training head
    loaded = load_encoder(str(out), mlm_head=True)  # dispatches on recon.json
    assert loaded.special == SpecialTokens(**{**bundle.special.__dict__, "added": ()})
    assert loaded.special.all_tokens() == bundle.special.all_tokens()  # same order, same type ids
    assert loaded.tokenizer.convert_tokens_to_ids(loaded.special.all_tokens()) == \
        bundle.tokenizer.convert_tokens_to_ids(bundle.special.all_tokens())
    enc = loaded.model
    assert enc.mlm_head.predictions.decoder.weight is enc.backbone.get_input_embeddings().weight
    rep2, logits2 = _outputs(loaded)
    assert torch.equal(rep, rep2) and torch.equal(logits, logits2)


def test_round_trip_minilm_and_atomic_replace(tmp_path):
    bundle = load_encoder("minilm")
    rep, _ = _outputs(bundle)
    target = tmp_path / "minilm-ckpt"
    save_checkpoint(target, bundle.model, bundle.tokenizer, extra={"step": 1})
    with torch.no_grad():
        bundle.model.backbone.embeddings.word_embeddings.weight[1].add_(1.0)  # [unused0] = head marker
    changed, _ = _outputs(bundle)
    assert not torch.equal(rep, changed)
    save_checkpoint(target, bundle.model, bundle.tokenizer, extra={"step": 2})  # replaces the first one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm-ckpt"]  # no temp/old dirs left
    loaded = load_checkpoint(target)
    assert json.loads((target / "recon.json").read_text())["step"] == 2
    assert loaded.special.head_start == "[unused0]" and not loaded.model.has_mlm_head
    assert torch.equal(_outputs(loaded)[0], changed)


def test_fresh_mlm_head_on_a_headless_checkpoint(tmp_path):
    bundle = load_encoder(str(make_tiny_bert_dir(tmp_path)))
    out = save_checkpoint(tmp_path / "ckpt", bundle.model, bundle.tokenizer, extra={})
    loaded = load_checkpoint(out, mlm_head=True)
    enc = loaded.model
    assert loaded.newly_initialized and all(k.startswith("mlm_head.") for k in loaded.newly_initialized)
    assert "mlm_head.predictions.decoder.weight" not in loaded.newly_initialized  # tied, so loaded
    assert enc.mlm_head.predictions.decoder.weight is enc.backbone.get_input_embeddings().weight
    assert torch.equal(_outputs(loaded)[0], _outputs(bundle)[0])


class _Exploit:
    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_pickle_files_are_never_loaded(tmp_path, monkeypatch):
    bundle = load_encoder(str(make_tiny_bert_dir(tmp_path)))
    out = save_checkpoint(tmp_path / "ckpt", bundle.model, bundle.tokenizer, extra={})
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps({"weights": _Exploit(str(sentinel))})
    for name in ("pytorch_model.bin", "training_args.bin", "optimizer.pt"):
        (out / name).write_bytes(payload)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle-based loading was attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = load_checkpoint(out)
    assert not sentinel.exists()
    assert torch.equal(_outputs(loaded)[0], _outputs(bundle)[0])

    (out / WEIGHTS).unlink()
    with pytest.raises(ReconError, match="model.safetensors"):
        load_encoder(str(out))
    assert not sentinel.exists()


def test_bad_manifest_is_reported(tmp_path):
    bundle = load_encoder(str(make_tiny_bert_dir(tmp_path)))
    out = save_checkpoint(tmp_path / "ckpt", bundle.model, bundle.tokenizer, extra={})
    manifest = json.loads((out / "recon.json").read_text())
    manifest["format_version"] = 99
    (out / "recon.json").write_text(json.dumps(manifest))
    with pytest.raises(ReconError, match="format_version"):
        load_checkpoint(out)
