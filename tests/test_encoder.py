"""Encoder loading, marker wiring and the relation representation (models.encoder, models.heads)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recon.data_prep.encoding import WordPieceCache, encode
from recon.core.errors import ReconError
from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.formats import InputFormat, render
from recon.core.defaults import ENCODER_ALIASES
from recon.models.nets.loading import load_encoder
from recon.models.nets.heads import RelationClassifier
from tiny_bert import make_tiny_bert_dir

SEMEVAL_TRAIN = Path("/work/shared/datasets/semeval/train.txt")


def _semeval_examples(n: int) -> list[RelationExample]:
    out = []
    with SEMEVAL_TRAIN.open() as fh:
        for i, line in zip(range(n), fh):
            d = json.loads(line)
            out.append(RelationExample(tuple(d["token"]), Entity(*d["h"]["pos"]), Entity(*d["t"]["pos"]),
                                       d["relation"], source=f"{SEMEVAL_TRAIN}:{i + 1}"))
    return out


def _batch(bundle, examples, fmt=InputFormat.CM, max_length=64):
    cache = WordPieceCache(bundle.tokenizer, bundle.special.all_tokens())
    enc = [encode(render(ex, fmt, bundle.special), cache, max_length) for ex in examples]
    width = max(len(e.input_ids) for e in enc)
    pad = bundle.tokenizer.pad_token_id
    ids = torch.tensor([list(e.input_ids) + [pad] * (width - len(e.input_ids)) for e in enc])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in enc])
    return ids, mask, torch.tensor([e.head_pos for e in enc]), torch.tensor([e.tail_pos for e in enc])


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm")


def test_minilm_uses_unused_slots_without_resizing(minilm):
    assert minilm.special.head_start == "[unused0]" and minilm.special.tail_start == "[unused2]"
    assert minilm.special.added == ()
    assert minilm.model.backbone.get_input_embeddings().num_embeddings == 30522 == len(minilm.tokenizer)
    assert minilm.tokenizer.tokenize("[unused0] paris [unused1]") == ["[unused0]", "paris", "[unused1]"]
    assert minilm.source == "minilm" and ENCODER_ALIASES["minilm"].endswith("model")


def test_minilm_representation_is_start_marker_states(minilm):
    enc = minilm.model.eval()
    ids, mask, head, tail = _batch(minilm, _semeval_examples(3))
    assert ids[0, head[0]].item() == minilm.tokenizer.convert_tokens_to_ids("[unused0]")
    assert ids[0, tail[0]].item() == minilm.tokenizer.convert_tokens_to_ids("[unused2]")
    with torch.no_grad():
        rep, seq = enc.encode(ids, mask, head, tail)
        assert rep.shape == (3, 768) and enc.rep_size == 768 and enc.hidden_size == 384
        for b in range(3):
            assert torch.equal(rep[b, :384], seq[b, head[b]]) and torch.equal(rep[b, 384:], seq[b, tail[b]])
        assert torch.equal(enc(ids, mask, head, tail), rep)
    # Padding must not change an example's representation (attention mask is honoured).
    with torch.no_grad():
        alone = enc(*[t[:1, : int(mask[0].sum())] if t.dim() == 2 else t[:1] for t in (ids, mask, head, tail)])
    torch.testing.assert_close(alone, rep[:1], atol=1e-5, rtol=1e-4)


def test_minilm_mlm_head_is_new_and_tied():
    bundle = load_encoder("minilm", mlm_head=True)
    enc = bundle.model
    assert "cls.predictions.transform.dense.weight" in bundle.newly_initialized
    assert not any(k.startswith("bert.encoder") for k in bundle.newly_initialized)
    decoder = enc.mlm_head.predictions.decoder
    assert decoder.weight is enc.backbone.get_input_embeddings().weight
    ids, mask, head, tail = _batch(bundle, _semeval_examples(2))
    with torch.no_grad():
        rep, seq = enc.encode(ids, mask, head, tail)
        assert enc.mlm_logits(seq).shape == (*ids.shape, 30522)


def test_vocab_without_unused_slots_gets_added_tokens_and_resized_embeddings(tmp_path):
    path = make_tiny_bert_dir(tmp_path)
    bundle = load_encoder(str(path))
    base_vocab = 29
    assert bundle.special.head_start == "[E1]" and "[E1]" in bundle.special.added
    assert len(bundle.tokenizer) == base_vocab + len(bundle.special.added)
    emb = bundle.model.backbone.get_input_embeddings()
    assert emb.num_embeddings == len(bundle.tokenizer)
    assert bundle.model.config.vocab_size == len(bundle.tokenizer)
    assert bundle.tokenizer.tokenize("[E1] john [/E1]") == ["[E1]", "john", "[/E1]"]
    ex = RelationExample(("john", "lives", "in", "paris", "."), Entity(0, 1), Entity(3, 4), "lives_in")
    for fmt in InputFormat:
        ids, mask, head, tail = _batch(bundle, [ex], fmt)
        assert int(ids.max()) < emb.num_embeddings
        logits = RelationClassifier(bundle.model, num_labels=5)(ids, mask, head, tail)
        assert logits.shape == (1, 5)


def test_tiny_mlm_model_resize_keeps_decoder_tied(tmp_path):
    bundle = load_encoder(str(make_tiny_bert_dir(tmp_path, mlm=True)), mlm_head=True)
    enc = bundle.model
    assert bundle.newly_initialized == ()
    decoder = enc.mlm_head.predictions.decoder
    assert decoder.weight is enc.backbone.get_input_embeddings().weight
    assert decoder.bias.shape == (len(bundle.tokenizer),)
    seq = torch.zeros(1, 3, enc.hidden_size)
    assert enc.mlm_logits(seq).shape == (1, 3, len(bundle.tokenizer))


def test_classifier_trains_the_encoder(tmp_path):
    bundle = load_encoder(str(make_tiny_bert_dir(tmp_path)))
    clf = RelationClassifier(bundle.model, num_labels=3, dropout=0.0)
    ex = RelationExample(("john", "lives", "in", "paris", "."), Entity(0, 1), Entity(3, 4), "lives_in")
    ids, mask, head, tail = _batch(bundle, [ex, ex])
    loss = torch.nn.functional.cross_entropy(clf(ids, mask, head, tail), torch.tensor([0, 2]))
    loss.backward()
    grad = bundle.model.backbone.get_input_embeddings().weight.grad
    assert grad is not None and grad[ids[0, head[0]]].abs().sum() > 0
    assert all(p.grad is not None for p in clf.parameters() if p.requires_grad)  # no unused pooler


def test_unknown_encoder_errors_say_what_was_tried(tmp_path, monkeypatch):
    missing = tmp_path / "nope" / "encoder"
    with pytest.raises(ReconError) as err:
        load_encoder(str(missing))
    assert str(missing) in str(err.value) and "minilm" in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ReconError) as err:
        load_encoder("recon-test/not-a-real-encoder")
    assert "not-a-real-encoder" in str(err.value) and "cache" in str(err.value)
