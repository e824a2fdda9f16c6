"""CNN baseline: features from 20 real SemEval examples, spaCy tags (cached), word vectors, forward."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recon.data_prep.cnn_features import CNNFeaturizer, Vocab, load_word_vectors
from recon.core.errors import DataError, ReconError
from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.formats import InputFormat, render
from recon.data_prep.special_tokens import SpecialTokens
from recon.data_prep.tagging import SpacyTagger, example_tags
from recon.models.nets.cnn import (CNN_DEFAULTS, DEFAULT_WORD_VECTORS, EMBEDDED_DIM, EMBEDDED_STD, CNNClassifier,
                              CNNConfig, build_cnn, project_embeddings, word_vector_matrix)

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


def test_build_cnn_honours_hidden_size_and_seed(featurizer):
    from recon.models.nets.seed import seed_everything

    model, notes = build_cnn(featurizer, 12, hidden_size=64, word_vectors="random", seed=7)
    assert model.conv.out_channels == 64 and model.classifier.in_features == 64
    assert model.word.embedding_dim == 50 and model.word.num_embeddings == len(featurizer.words)
    assert len(notes) == 1 and "random" in notes[0]
    again, _ = build_cnn(featurizer, 12, hidden_size=64, word_vectors="random", seed=7)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    # "random" is exactly the model finetune built before word vectors existed
    seed_everything(7)
    old = CNNClassifier(CNNConfig(num_labels=12, hidden=64, **featurizer.vocab_sizes()))
    assert torch.equal(old.word.weight, model.word.weight) and torch.equal(old.conv.weight, model.conv.weight)
    default, _ = build_cnn(featurizer, 12, word_vectors="random")
    assert default.conv.out_channels == CNN_DEFAULTS["hidden"]


def test_glove_file_rows_and_coverage(featurizer):
    vocab = Vocab(["<pad>", "<unk>", "the", "of", "effect", "[E1]", "qwertyuiop"])
    matrix, note = word_vector_matrix(vocab, FIXTURES / "glove_tiny.txt", special_tokens=["[E1]"], seed=3)
    assert matrix.shape == (7, 4)
    assert torch.equal(matrix[0], torch.zeros(4))
    assert torch.allclose(matrix[2], torch.tensor([0.418, 0.24968, -0.41242, 0.1217]))
    assert torch.allclose(matrix[3], torch.tensor([0.70853, 0.57088, -0.4716, 0.18048]))
    assert torch.allclose(matrix[4], torch.tensor([0.1, 0.2, 0.3, 0.4]))  # "Effect" in the file, case-folded
    assert "3 of 5 vocabulary words found" in note and "glove_tiny.txt" in note and "4-d" in note
    assert torch.equal(matrix, word_vector_matrix(vocab, FIXTURES / "glove_tiny.txt", seed=3)[0])  # seeded
    model, notes = build_cnn(featurizer, 5, hidden_size=32, word_vectors=str(FIXTURES / "glove_tiny.txt"))
    assert model.word.embedding_dim == 4 and model.conv.in_channels == 4 + 2 * 10 + 2 * 5
    for word in ("the", ",", "of"):  # frequent words of the 20 training sentences
        row = model.word.weight[featurizer.words.id(word)]
        assert torch.allclose(row, word_vector_matrix(Vocab(["<pad>", "<unk>", word]), FIXTURES / "glove_tiny.txt")[0][2])
    assert "vocabulary words found" in notes[0]


def test_bad_glove_files_name_file_and_line(tmp_path):
    vocab = Vocab(["<pad>", "<unk>", "the", "of"])
    with pytest.raises(DataError) as err:
        word_vector_matrix(vocab, FIXTURES / "vectors_bad_dim.txt")
    assert err.value.line == 3 and "vectors_bad_dim.txt" in str(err.value) and "line 3" in str(err.value)
    bad = tmp_path / "glove_nan.txt"
    bad.write_text("the 0.1 0.2\nof 0.3 abc\n")
    with pytest.raises(DataError, match=r"glove_nan.txt, line 2.*not a number"):
        word_vector_matrix(vocab, bad)
    with pytest.raises(ReconError, match="embedded, random or a GloVe-format"):
        word_vector_matrix(vocab, tmp_path / "missing.txt")


def test_embedded_vectors_are_mean_word_piece_embeddings():
    from transformers import AutoModel, AutoTokenizer

    from recon.core.defaults import ENCODER_ALIASES

    tok = AutoTokenizer.from_pretrained(ENCODER_ALIASES["minilm"])  # read independently of recon's loader
    emb = AutoModel.from_pretrained(ENCODER_ALIASES["minilm"]).get_input_embeddings().weight.detach()
    words = ["<pad>", "<unk>", "the", "misconfiguration", "[E1]", "café"]
    matrix, note = word_vector_matrix(Vocab(words), "embedded", special_tokens=["[E1]"], seed=5,
                                      embedded_dim=None, embedded_std=None)  # the raw embeddings
    assert matrix.shape == (6, 384) and DEFAULT_WORD_VECTORS == "embedded"
    assert torch.equal(matrix[0], torch.zeros(384))
    torch.testing.assert_close(matrix[1], emb[tok.unk_token_id])
    torch.testing.assert_close(matrix[2], emb[tok.convert_tokens_to_ids("the")])
    pieces = tok.tokenize("misconfiguration")
    assert len(pieces) > 1
    torch.testing.assert_close(matrix[3], emb[tok.convert_tokens_to_ids(pieces)].mean(0))
    torch.testing.assert_close(matrix[5], emb[tok.convert_tokens_to_ids(tok.tokenize("café"))].mean(0))
    marker_pieces = emb[tok.convert_tokens_to_ids(tok.tokenize("[E1]"))].mean(0)
    assert not torch.allclose(matrix[4], marker_pieces)  # markers are not words: seeded random
    assert "3 of 4 vocabulary words" in note and "384-d" in note
    # the default: the same means, scaled so the encoder's whole table has std EMBEDDED_STD
    scaled, note = word_vector_matrix(Vocab(words), "embedded", special_tokens=["[E1]"], seed=5)
    factor = EMBEDDED_STD / float(emb.std())
    torch.testing.assert_close(scaled[[1, 2, 3, 5]], matrix[[1, 2, 3, 5]] * factor)
    assert f"std {EMBEDDED_STD:g}" in note and EMBEDDED_DIM is None
    assert torch.equal(scaled[4], word_vector_matrix(Vocab(words), "embedded", special_tokens=["[E1]"], seed=5)[0][4])
    # projected: 50 principal components, linear, so still the mean of the projected pieces
    proj = project_embeddings(emb, 50, 1.0)
    assert proj.shape == (emb.shape[0], 50) and abs(float(proj.std()) - 1.0) < 1e-4
    small, note = word_vector_matrix(Vocab(words), "embedded", special_tokens=["[E1]"], embedded_dim=50,
                                     embedded_std=1.0)
    torch.testing.assert_close(small[3], proj[tok.convert_tokens_to_ids(pieces)].mean(0))
    assert "50-d principal components of 384" in note


def test_extend_vocab_keeps_training_ids(featurizer):
    import copy

    wide = copy.deepcopy(featurizer)
    before = list(wide.words.itos)
    assert wide.extend_vocab(["the", "zyzzyva", "zyzzyva", "aardvark"]) == 2
    assert wide.words.itos == [*before, "zyzzyva", "aardvark"] and wide.words.id("aardvark") == len(before) + 1
    words = wide.rendered_words(_load(SEMEVAL / "dev.txt", 3))
    assert words and len(words) == len(set(words)) and all(w == w.lower() or w.startswith("[") for w in words)
