"""Test views after fine-tuning: figures per view, predictions paired with the original test, flip shares,
OnlyC equal to an independent OnlyC evaluation, and the trial id untouched by ``eval_views``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recon.core.config import ConfigError
from recon.data_prep.formats import InputFormat
from recon.models.train import loop
from recon.models.train.config import TrainConfig
from recon.models.train.finetune import run_finetune
from recon.models.train.finetune_config import DataOptions, FinetuneConfig

FIXTURE = Path(__file__).parent / "fixtures" / "training" / "keyword"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
ALL_VIEWS = ("swap-type", "swap-unseen", "swap-random", "onlyc")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer hidden-32 BERT over the keyword fixture's vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizer

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = BertTokenizer(str(FIXTURE / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         vocab_size=len(tokenizer), max_position_embeddings=64)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture
def trained(monkeypatch) -> list:
    """The models ``fit`` hands back, so a test can score them independently of the views code."""
    models, real = [], loop.fit

    def capture(model, *args, **kwargs):
        models.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(loop, "fit", capture)
    return models


def keyword_cfg(encoder: str, **kw) -> FinetuneConfig:
    training = TrainConfig(epochs=3, batch_size=16, lr=2e-3, seed=3, warmup_ratio=0.0)
    return FinetuneConfig(**{"dataset": None, "path": str(FIXTURE), "kind": "opennre", "encoder": encoder,
                             "data": DataOptions(max_length=32), "training": training, **kw})


def onlyc_predictions(model, encoder: str, examples, label2id: dict, max_length: int, metric: str,
                      negative_id) -> tuple[dict, list[int]]:
    """Score ``model`` on ``examples`` rendered in OnlyC with the run's tokenizer: encoding and loop only."""
    from recon.models.nets.loading import load_encoder
    from recon.models.train.batching import Collator, encode_examples

    bundle = load_encoder(encoder, cache=True)
    data = encode_examples(examples, InputFormat.ONLYC, bundle.tokenizer, bundle.special, max_length, label2id)
    batches = loop.make_loader(data, 7, shuffle=False, collate_fn=Collator(bundle.tokenizer.pad_token_id))
    cfg = TrainConfig(metric=metric, negative_id=negative_id, cpu_bf16=False)  # float32: exact predictions
    metrics, pairs = loop.evaluate(model, loop.ClassificationTask(), batches, cfg)
    return metrics, [p for p, _ in pairs]


def check_views(out: dict, out_dir: Path, views: tuple[str, ...]) -> list[dict]:
    """Structure, pairing with predictions.jsonl and flip shares; returns the view predictions."""
    assert tuple(out["views"]) == views
    originals = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (out_dir / "view_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(views) * len(originals)
    for name in views:
        summary = out["views"][name]
        assert set(summary["test"]) == set(out["test"]) and summary["n"] == out["n_test"]
        assert bool(summary["pools"]) == (name != "onlyc")
        assert 0.0 <= summary["flip_share"] <= 1.0 and summary["reported"]["original"] == out["reported"]["test"]
        mine = [r for r in rows if r["view"] == name]
        assert [r["index"] for r in mine] == list(range(len(originals)))
        for row, orig in zip(mine, originals):
            assert (row["source"], row["gold"], row["original_pred"]) == (orig["source"], orig["gold"], orig["pred"])
            assert row["flipped"] == (row["pred"] != orig["pred"])
        assert summary["flip_share"] == pytest.approx(sum(r["flipped"] for r in mine) / len(mine))
        assert summary["test"]["accuracy"] == pytest.approx(sum(r["pred"] == r["gold"] for r in mine) / len(mine))
        assert summary["format"] == ("OnlyC" if name == "onlyc" else out["format"])
        report = summary["report"]
        if name != "onlyc":
            assert report["swapped_mentions"] + sum(report["skipped"].values()) == report["mentions"]
            changed = [r for r in mine if r["changed"]]
            assert len(changed) == summary["n_changed"] and all("tokens" in r for r in changed)
    assert json.loads((out_dir / "metrics.json").read_text())["views"] == out["views"]
    return rows


def test_every_view_after_training_and_onlyc_matches_an_independent_evaluation(tiny_bert, tmp_path, trained):
    from recon.data_prep.registry import load_dataset

    out = run_finetune(keyword_cfg(tiny_bert, eval_views=ALL_VIEWS), out_dir=tmp_path)
    rows = check_views(out, tmp_path, ALL_VIEWS)
    assert out["views"]["swap-type"]["n_changed"] > 40  # 48 test sentences, two names each
    ds = load_dataset(path=str(FIXTURE), kind="opennre")
    metrics, preds = onlyc_predictions(trained[-1], tiny_bert, ds.splits["test"], ds.label2id(), 32, "micro_f1",
                                       ds.label2id()["Other"])
    assert out["views"]["onlyc"]["test"] == pytest.approx(metrics)
    assert [r["pred"] for r in rows if r["view"] == "onlyc"] == [ds.labels[p] for p in preds]


def test_views_leave_the_trial_id_alone_and_unknown_views_are_refused():
    base = FinetuneConfig()
    assert FinetuneConfig(eval_views=ALL_VIEWS, view_seed=5, view_untyped="keep").identity() == base.identity()
    assert FinetuneConfig(eval_views=["onlyc", "onlyc"]).eval_views == ("onlyc",)
    assert FinetuneConfig(eval_views="onlyc").eval_views == ("onlyc",)
    with pytest.raises(ConfigError, match="eval_views: unknown view 'swap'"):
        FinetuneConfig(eval_views=("swap",))


def test_a_mention_free_format_cannot_flip_under_a_swap(tiny_bert, tmp_path):
    """Trained in OnlyC, the model never sees a name: every swap view scores as the test, with no flip."""
    out = run_finetune(keyword_cfg(tiny_bert, input_format="OnlyC", eval_views=("swap-type", "swap-random")),
                       out_dir=tmp_path)
    check_views(out, tmp_path, ("swap-type", "swap-random"))
    for name in ("swap-type", "swap-random"):
        assert out["views"][name]["flip_share"] == 0.0 and out["views"][name]["test"] == out["test"]


def test_cnn_views(tmp_path):
    from recon.models.train.finetune_config import CnnTraining

    cfg = keyword_cfg("minilm", model="cnn", cnn=CnnTraining(epochs=2, word_vectors="random"),
                      eval_views=("swap-type", "onlyc"))
    out = run_finetune(cfg, out_dir=tmp_path)
    check_views(out, tmp_path, ("swap-type", "onlyc"))


@pytest.mark.slow
def test_cli_finetune_semeval_with_views(tmp_path, trained, capsys):
    """``recon finetune --eval-views swap-type onlyc`` on SemEval's 1% file with MiniLM, two training steps."""
    from recon.data_prep.registry import load_dataset
    from recon.models.train.finetune_data import subsample
    from recon.orchestration.cli.main import main

    argv = ["finetune", "--dataset", "semeval", "--data-dir", str(DATA), "--split", "0.01", "--split-source",
            "paper", "--encoder", "minilm", "--seed", "42", "--epochs", "1", "--max-train-steps", "2",
            "--batch-size", "32", "--max-eval", "120", "--eval-views", "swap-type", "onlyc", "--out", str(tmp_path),
            "--no-cpu-bf16"]  # float32: the view's predictions are compared exactly with a separate scoring
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = json.loads((tmp_path / "metrics.json").read_text())
    assert line["test"] == out["test"] and out["n_test"] == 120
    rows = check_views(out, tmp_path, ("swap-type", "onlyc"))
    swap = out["views"]["swap-type"]
    assert swap["report"]["examples"] == 120 and swap["n_changed"] >= 110 and swap["report"]["coverage"] < 0.1
    ds = load_dataset("semeval", data_dir=str(DATA))
    test = subsample(ds.splits["test"], 120)
    metrics, preds = onlyc_predictions(trained[-1], "minilm", test, ds.label2id(), 100, "micro_f1",
                                       ds.label2id()["Other"])
    assert out["views"]["onlyc"]["test"]["micro_f1"] == pytest.approx(metrics["micro_f1"])
    assert [r["pred"] for r in rows if r["view"] == "onlyc"] == [ds.labels[p] for p in preds]


def test_avoid_texts_from_a_names_file_or_a_built_corpus_and_the_preflight(tmp_path):
    from recon.data_prep.corpus import load_corpus
    from recon.data_prep.example import Entity, RelationExample
    from recon.data_prep.dataset import Dataset
    from recon.models.train.checks import finetune_problems
    from recon.models.train.views import avoid_texts, pools_for

    names = tmp_path / "names.txt"
    names.write_text("Zed\n\n  Initech Corp \n", encoding="utf-8")
    assert avoid_texts(str(names)) == [("Zed",), ("Initech", "Corp")] and avoid_texts(None) == []
    corpus = Path(__file__).parent / "fixtures" / "pretrain" / "corpus"
    sentences = avoid_texts(str(corpus))
    assert sentences and set(sentences) == {ex.tokens for ex in load_corpus(corpus).examples}

    def ex(text, h, t):
        return RelationExample(tuple(text.split()), Entity(*h, type="PERSON", type_source="annotation"),
                               Entity(*t, type="ORG", type_source="annotation"), "r")

    ds = Dataset("toy", {"train": [ex("Ann joined Acme", (0, 1), (2, 3))],
                         "dev": [ex("Zed joined Initech Corp", (0, 1), (2, 4))],
                         "test": [ex("Bo left Globex", (0, 1), (2, 3))]}, ["r"], None, "micro_f1", 100)
    assert {n.tokens for n in pools_for(ds).unseen["ORG"]} == {("Initech", "Corp"), ("Globex",)}
    assert {n.tokens for n in pools_for(ds, avoid=avoid_texts(str(names))).unseen["ORG"]} == {("Globex",)}
    problems = finetune_problems(FinetuneConfig(view_avoid=str(tmp_path / "nowhere.txt")))
    assert any("--view-avoid" in str(p) for p in problems)


def test_a_failing_view_costs_only_itself(tiny_bert, tmp_path, monkeypatch):
    """A view that raises is named in its summary and the notes; the run's results and other views stand."""
    from recon.models.train import views

    real = views.make_view

    def broken(kind, *args, **kwargs):
        if kind == "swap-type":
            raise ValueError("no names today")
        return real(kind, *args, **kwargs)

    monkeypatch.setattr(views, "make_view", broken)
    monkeypatch.setattr(views, "_VIEWS", type(views._VIEWS)())  # a view an earlier test built is not built again
    out = run_finetune(keyword_cfg(tiny_bert, training=TrainConfig(epochs=1, batch_size=16, seed=3),
                                   eval_views=("swap-type", "onlyc")), out_dir=tmp_path)
    assert out["views"]["swap-type"] == {"error": "ValueError: no names today"}
    assert any("test view swap-type failed" in note for note in out["notes"])
    assert out["test"]["n"] == 48 and out["views"]["onlyc"]["n"] == 48
    assert len((tmp_path / "view_predictions.jsonl").read_text().splitlines()) == 48
