"""CNN baseline: features from 20 real SemEval examples, spaCy tags (cached), word vectors, forward."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recon.data_prep.cnn_features import CNNFeaturizer, Vocab, load_word_vectors
from recon.data_prep.errors import DataError
from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.formats import InputFormat, render
from recon.data_prep.special_tokens import SpecialTokens
from recon.data_prep.tagging import SpacyTagger, example_tags
from recon.models.cnn import CNN_DEFAULTS, CNNClassifier, CNNConfig

SEMEVAL = Path("/work/shared/datasets/semeval")
FIXTURES = Path(__file__).parent / "fixtures" / "cnn"
SPECIAL = SpecialTokens.for_vocab([f"[unused{i}]" for i in range(200)])  # the paper's BERT slots


def _load(path: Path, n: int, every: int = 1) -> list[RelationExample]:
    """``n`` examples, every ``every``-th line (the files are grouped by relation)."""
    out = []
    with path.open() as fh:
        for i, line in enumerate(fh):
            if i % every or len(out) == n:
                continue
            d = json.loads(line)
            out.append(RelationExample(tuple(d["token"]), Entity(*d["h"]["pos"]), Entity(*d["t"]["pos"]),
                                       d["relation"], source=f"{path}:{i + 1}"))
    return out


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return SpacyTagger(cache=tmp_path_factory.mktemp("cache") / "tags.sqlite")


@pytest.fixture(scope="module")
def train():
    return _load(SEMEVAL / "train.txt", 20, every=300)  # 12 relations


@pytest.fixture(scope="module")
def featurizer(train, tagger):
    return CNNFeaturizer(max_length=100).fit(train, InputFormat.CM, SPECIAL)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_features_on_real_semeval(featurizer, train):
    feats = featurizer.transform(train)
    lengths = [len(render(ex, InputFormat.CM, SPECIAL).words) for ex in train]
    assert set(feats) == {"word_ids", "pos_ids", "ner_ids", "pos1", "pos2", "mask"}
    assert all(t.shape == (20, max(lengths)) and t.dtype == torch.long for t in feats.values())
    assert feats["mask"].sum(1).tolist() == lengths
    for key in ("word_ids", "pos_ids", "ner_ids", "pos1", "pos2"):
        assert bool((feats[key][feats["mask"] == 0] == 0).all())  # padding id everywhere outside
    assert featurizer.words.itos[:2] == ["<pad>", "<unk>"]
    assert int((feats["word_ids"][feats["mask"] == 1] == 1).sum()) == 0  # train words are all known
    zero = featurizer.max_distance + 1
    for b, ex in enumerate(train):
        r = render(ex, InputFormat.CM, SPECIAL)
        assert feats["word_ids"][b, r.head_index] == featurizer.words.id("[unused0]")
        assert feats["word_ids"][b, r.tail_index] == featurizer.words.id("[unused2]")
        assert feats["pos1"][b, r.head_index] == zero and feats["pos2"][b, r.tail_index] == zero
        assert feats["pos1"][b, 0] == zero - min(r.head_index, featurizer.max_distance)
        # markers are tagged as themselves: their own POS/NER ids, not a word's
        assert featurizer.pos_tags.itos[feats["pos_ids"][b, r.head_index]] == "[unused0]"
        assert featurizer.ner_tags.itos[feats["ner_ids"][b, r.tail_index]] == "[unused2]"
        assert featurizer.pos_tags.itos[feats["pos_ids"][b, r.head_index + 1]] in ("NN", "NNS", "NNP", "JJ", "VBG")


def test_unseen_words_map_to_unk_and_state_round_trip(featurizer, tagger):
    dev = _load(SEMEVAL / "dev.txt", 10)
    feats = featurizer.transform(dev)
    unknown = [w for ex in dev for w in render(ex, InputFormat.CM, SPECIAL).words
               if w.lower() not in featurizer.words.stoi]
    assert unknown and int((feats["word_ids"] == 1).sum()) == len(unknown)
    again = CNNFeaturizer.from_state(json.loads(json.dumps(featurizer.state())), tagger=tagger)
    assert all(torch.equal(again.transform(dev)[k], v) for k, v in feats.items())


@pytest.mark.parametrize("fmt", list(InputFormat))
def test_every_input_format_and_truncation(train, tagger, fmt):
    typed = [ex.with_types("PERSON", "ORG", "spacy") for ex in train]
    feat = CNNFeaturizer(max_length=8, max_distance=5, tagger=tagger).fit(typed, fmt, SPECIAL)
    feats = feat.transform(typed)
    assert feats["word_ids"].shape[1] <= 8
    zero = feat.max_distance + 1
    for b in range(len(typed)):  # the head and tail positions survive the window
        n = int(feats["mask"][b].sum())
        assert zero in feats["pos1"][b, :n].tolist() and zero in feats["pos2"][b, :n].tolist()
    if fmt in (InputFormat.ONLYT,):
        assert feats["mask"].sum(1).tolist() == [2] * len(typed)
        assert feat.words.itos[feats["word_ids"][0, 0]] == SPECIAL.type_token("subj", "PERSON")


def test_cnn_forward_padding_invariance_and_learning(featurizer, train):
    torch.manual_seed(0)
    labels = sorted({ex.label for ex in train})
    assert len(labels) == 12
    model = CNNClassifier(CNNConfig(num_labels=len(labels), **featurizer.vocab_sizes()))
    assert model.conv.out_channels == CNN_DEFAULTS["hidden"] == 230 and model.conv.kernel_size == (3,)
    assert CNN_DEFAULTS == {"optimizer": "sgd", "lr": 0.5, "batch_size": 160, "hidden": 230}
    feats = featurizer.transform(train)
    model.eval()
    logits = model(**feats)
    assert logits.shape == (20, len(labels))
    n = int(feats["mask"][0].sum())
    alone = model(**{k: v[:1, :n] for k, v in feats.items()})
    torch.testing.assert_close(alone, logits[:1])
    y = torch.tensor([labels.index(ex.label) for ex in train])
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=CNN_DEFAULTS["lr"])
    first = None
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(**feats), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < first / 2
    assert (model(**feats).argmax(1) == y).float().mean() > 0.8


def test_word_vectors(tmp_path):
    vocab = Vocab(["<pad>", "<unk>", "the", "cause", "[unused0]", "zebra"])
    m = load_word_vectors(FIXTURES / "vectors_ok.txt", vocab, seed=1)
    assert m.shape == (6, 3)
    assert torch.equal(m[0], torch.zeros(3))
    assert torch.allclose(m[2], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(m[3], torch.tensor([2.0, 2.0, 2.0]))  # exact "cause" wins over "Cause"
    assert torch.allclose(m[4], torch.tensor([0.5, 0.5, 0.5]))
    assert torch.equal(m[5], load_word_vectors(FIXTURES / "vectors_ok.txt", vocab, seed=1)[5])  # seeded
    config = CNNConfig(vocab_size=6, num_labels=2, pos_vocab_size=3, ner_vocab_size=3, position_vocab_size=12)
    model = CNNClassifier(config, word_vectors=m)
    assert model.word.embedding_dim == 3 and torch.equal(model.word.weight.data, m)
    with pytest.raises(DataError) as err:
        load_word_vectors(FIXTURES / "vectors_bad_dim.txt", vocab)
    assert err.value.line == 3 and err.value.field == "vector" and "vectors_bad_dim.txt" in str(err.value)
    assert "2 dimensions, expected 3" in str(err.value)


def test_tags_come_from_the_example_or_cached_spacy(tmp_path, monkeypatch):
    tacred_like = RelationExample(("Bill", "founded", "Microsoft"), Entity(0, 1), Entity(2, 3), "org:founded_by",
                                  pos=("NNP", "VBD", "NNP"), ner=("PERSON", "O", "ORGANIZATION"))
    refuse = SpacyTagger(cache=tmp_path / "never.sqlite")
    monkeypatch.setattr(refuse, "_run_spacy", lambda s: pytest.fail("spaCy ran for a tagged example"))
    assert example_tags([tacred_like], refuse) == [(("NNP", "VBD", "NNP"), ("PERSON", "O", "ORGANIZATION"))]

    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path / "cachedir"))
    plain = RelationExample(("John", "Smith", "lives", "in", "Paris", "."), Entity(0, 2), Entity(4, 5), "x")
    tagger = SpacyTagger()
    first = example_tags([plain], tagger)
    assert first[0][0][2] == "VBZ" and first[0][1][4] == "GPE" and len(first[0][0]) == 6
    assert tagger.cache_path.is_file() and str(tagger.cache_path).startswith(str(tmp_path / "cachedir"))
    fresh = SpacyTagger()  # new process-equivalent: must answer from the cache without spaCy
    monkeypatch.setattr(fresh, "_run_spacy", lambda s: pytest.fail("cache miss"))
    assert example_tags([plain], fresh) == first

    bad = RelationExample(("a", "b"), Entity(0, 1), Entity(1, 2), "x", pos=("DT",), ner=("O", "O"), source="f.json#3")
    with pytest.raises(DataError, match="f.json.*field 'pos'"):
        CNNFeaturizer(tagger=refuse).fit([bad], InputFormat.CM, SPECIAL)
