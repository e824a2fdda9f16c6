"""run_finetune end to end on a keyword toy task with a tiny random BERT, and the CLI on real data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recon.models.train.finetune_config import CnnTraining, DataOptions, FinetuneConfig
from recon.models.train.finetune_data import majority_baseline, subsample
from recon.models.train.finetune import run_finetune
from recon.models.train.config import TrainConfig

torch.set_num_threads(1)
FIXTURE = Path(__file__).parent / "fixtures" / "training" / "keyword"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer hidden-32 BERT over the fixture's vocabulary (no [unusedN]: markers get added)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = BertTokenizer(str(FIXTURE / "vocab.txt"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=37, vocab_size=len(tokenizer), max_position_embeddings=64))
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return str(out)


def keyword_cfg(encoder: str, training: dict | None = None, **kw) -> FinetuneConfig:
    base = dict(dataset=None, path=str(FIXTURE), kind="opennre", encoder=encoder, data=DataOptions(max_length=32),
                training=TrainConfig(**{"epochs": 8, "batch_size": 16, "lr": 2e-3, "seed": 3, "warmup_ratio": 0.0,
                                        **(training or {})}))
    return FinetuneConfig(**{**base, **kw})


def test_tiny_bert_learns_the_keyword_task(tiny_bert: str, tmp_path: Path) -> None:
    out = run_finetune(keyword_cfg(tiny_bert), out_dir=tmp_path)
    assert out["n_train"] == 160 and out["n_dev"] == 48 and out["n_test"] == 48
    assert out["metric"] == "micro_f1" and out["negative_label"] == "Other"
    assert out["test"]["micro_f1"] >= 0.9, out["history"]
    assert out["test"]["micro_f1"] > out["majority_baseline_test"]["micro_f1"] + 0.5
    assert 1 <= out["best_epoch"] <= 8 and len(out["history"]) == 8
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["test"] == out["test"] and written["best_epoch"] == out["best_epoch"]
    preds = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 48
    # Predictions come back in file order, name the source line by its portable identity (the dataset's
    # folder, file and line; no directory of this machine), and reproduce the test score.
    assert [p["source"] for p in preds] == [f"keyword/test.txt:{i}" for i in range(1, 49)]
    gold_file = [json.loads(line)["relation"] for line in (FIXTURE / "test.txt").read_text().splitlines()]
    assert [p["gold"] for p in preds] == gold_file
    accuracy = sum(p["pred"] == p["gold"] for p in preds) / 48
    assert accuracy == pytest.approx(out["test"]["accuracy"])
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_same_config_same_result_and_max_eval_is_recorded(tiny_bert: str) -> None:
    cfg = keyword_cfg(tiny_bert, {"epochs": 2}, data=DataOptions(max_length=32, max_eval=20))
    a, b = run_finetune(cfg), run_finetune(cfg)
    assert a["history"] == b["history"] and a["test"] == b["test"]
    assert a["n_dev"] == 20 and a["n_test"] == 20
    assert any("max_eval=20" in note for note in a["notes"])
    c = run_finetune(keyword_cfg(tiny_bert, {"epochs": 2, "seed": 4}, data=DataOptions(max_length=32, max_eval=20)))
    assert c["history"] != a["history"]


def test_subsample_is_seeded_capped_and_in_order() -> None:
    items = list(range(100))
    a = subsample(items, 10)
    assert a == subsample(items, 10) and len(a) == 10 and a == sorted(a)
    assert subsample(items, 10, seed=1) != a
    assert subsample(items, None) == items and subsample(items, 500) == items


def test_majority_baseline_with_and_without_negative_class() -> None:
    from recon.data_prep.registry import load_dataset

    ds = load_dataset(path=str(FIXTURE), kind="opennre")
    train, test = ds.splits["train"], ds.splits["test"]
    label2id = ds.label2id()
    top = max(ds.labels, key=lambda label: sum(ex.label == label for ex in train))
    out = majority_baseline(train, test, label2id, None, "micro_f1")
    assert out["label"] == top
    assert out["score"] == pytest.approx(sum(ex.label == top for ex in test) / len(test))
    # With the majority label declared negative, always predicting it scores 0.
    assert majority_baseline(train, test, label2id, top, "micro_f1")["score"] == 0.0


def test_config_errors_are_user_errors() -> None:
    from recon.core.errors import ReconError

    with pytest.raises(ReconError, match="unknown input format"):
        FinetuneConfig(input_format="C+X")
    with pytest.raises(ReconError, match="either a dataset name or a path"):
        FinetuneConfig(dataset="semeval", path="/tmp")


@pytest.mark.slow
def test_cli_finetune_on_a_real_semeval_subset(tmp_path: Path) -> None:
    """``recon finetune`` on SemEval's shipped 1% file with MiniLM: one JSON line, files written."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "recon.orchestration.cli.main", "finetune", "--dataset", "semeval", "--split", "0.01",
         "--split-source", "paper", "--format", "C+M", "--model", "bert", "--encoder", "minilm", "--seed", "42",
         "--epochs", "1", "--batch-size", "32", "--max-eval", "40", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["n_train"] == 73 and result["n_dev"] == 40 and result["n_test"] == 40
    assert result["metric"] == "micro_f1" and 0.0 <= result["test"]["micro_f1"] <= 1.0
    assert result["majority_baseline_test"]["label"] == "Other"
    assert result["majority_baseline_test"]["micro_f1"] == 0.0
    assert json.loads((tmp_path / "metrics.json").read_text())["test"] == result["test"]
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 40


def test_cli_reports_user_errors_in_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "recon.orchestration.cli.main", "finetune", "--dataset", "nosuch"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown dataset 'nosuch'" in proc.stderr and "Traceback" not in proc.stderr


def test_cnn_baseline_learns_the_keyword_task(tmp_path: Path) -> None:
    """``model="cnn"``: featurizer fitted on train, SGD at the paper's lr 0.5, same loop and outputs."""
    cfg = FinetuneConfig(dataset=None, path=str(FIXTURE), kind="opennre", model="cnn",
                         cnn=CnnTraining(epochs=15, batch_size=16, word_vectors="random"),
                         data=DataOptions(max_length=32), training=TrainConfig(seed=1))
    out = run_finetune(cfg, out_dir=tmp_path)
    assert out["train_config"]["optimizer"] == "sgd" and out["train_config"]["lr"] == 0.5
    assert out["test"]["micro_f1"] >= 0.9, out["history"]
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 48
