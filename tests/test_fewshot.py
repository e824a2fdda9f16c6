"""Few-shot prototypical episodes: task plumbing, cached evaluation == direct, Wiki80 training relations."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from recon.data_prep.episodes import EpisodeSampler
from recon.data_prep.formats import InputFormat
from recon.data_prep.registry import load_dataset
from recon.data_prep.special_tokens import SpecialTokens
from recon.models.train.batching import encode_examples
from recon.models.train.fewshot import (
    EpisodeBatches, EpisodeCollator, FewshotConfig, FewshotSettings, IndexCollator, PrototypicalTask, RepresentationTable,
    encode_table, run_fewshot, wiki80_training_relations,
)
from recon.models.train.config import TrainConfig
from recon.models.train.loop import evaluate, fit, make_loader
from recon.models.nets.seed import seed_everything

torch.set_num_threads(1)
DATA = Path(__file__).parent / "fixtures" / "training" / "fewshot_data"
REPO = Path(__file__).resolve().parents[1]
KEYWORDS = ["founded", "born", "married", "wrote", "directed", "painted", "coached", "sang", "built", "owned"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    from transformers import BertConfig, BertModel, BertTokenizer

    out = tmp_path_factory.mktemp("tiny_bert_fs")
    tokenizer = BertTokenizer(str(DATA / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         vocab_size=len(tokenizer), max_position_embeddings=64)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def val_encoded():
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(str(DATA / "vocab.txt"))
    special = SpecialTokens.for_tokenizer(tokenizer)
    examples = load_dataset("fewrel", data_dir=str(DATA)).splits["val"]
    data = encode_examples(examples, InputFormat.CM, tokenizer, special, 32, None)
    return tokenizer, examples, data


class KeywordEncoder(nn.Module):
    """A 'perfect' encoder: the representation counts keyword tokens (one dimension per keyword)."""

    def __init__(self, tokenizer) -> None:
        super().__init__()
        self.register_buffer("ids", torch.tensor(tokenizer.convert_tokens_to_ids(KEYWORDS)))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, input_ids, attention_mask, head_pos, tail_pos):
        return (input_ids[:, :, None] == self.ids).float().sum(1) * self.scale


def by_relation(items, labels):
    out = {}
    for item, label in zip(items, labels):
        out.setdefault(label, []).append(item)
    return out


def test_episode_plumbing_gives_perfect_accuracy_with_a_perfect_encoder(val_encoded) -> None:
    tokenizer, examples, data = val_encoded
    sampler = EpisodeSampler(by_relation(data.items, [ex.label for ex in examples]), 5, 2, 3, seed=1)
    loader = make_loader(EpisodeBatches(sampler, 40), 4, shuffle=False, collate_fn=EpisodeCollator(0))
    cfg = TrainConfig(metric="accuracy")
    result, preds = evaluate(KeywordEncoder(tokenizer), PrototypicalTask(5, 2), loader, cfg)
    assert result["accuracy"] == 1.0 and len(preds) == 40 * 5 * 3
    # Shuffled queries: every label appears, so a misaligned label order could not score 1.0.
    assert {g for _, g in preds} == set(range(5))


def test_cached_representation_evaluation_equals_encoding_every_episode(val_encoded, tiny_bert) -> None:
    from recon.models.nets.loading import load_encoder

    _, examples, _ = val_encoded
    bundle = load_encoder(tiny_bert)
    data = encode_examples(examples, InputFormat.CM, bundle.tokenizer, bundle.special, 32, None)
    labels = [ex.label for ex in examples]
    cfg = TrainConfig(metric="accuracy")
    task = PrototypicalTask(5, 1)
    direct_sampler = EpisodeSampler(by_relation(data.items, labels), 5, 1, 2, seed=3)
    direct, direct_preds = evaluate(bundle.model, task,
                                    make_loader(EpisodeBatches(direct_sampler, 30), 4, shuffle=False,
                                                collate_fn=EpisodeCollator(bundle.tokenizer.pad_token_id)), cfg)
    index_sampler = EpisodeSampler(by_relation(range(len(data)), labels), 5, 1, 2, seed=3)
    table = encode_table(bundle.model, data, range(len(data)), 16, torch.device("cpu"))
    cached, cached_preds = evaluate(RepresentationTable(table), task,
                                    make_loader(EpisodeBatches(index_sampler, 30), 7, shuffle=False,
                                                collate_fn=IndexCollator()), cfg)
    assert cached_preds == direct_preds and cached == direct


def test_training_on_episodes_lowers_the_loss(val_encoded) -> None:
    tokenizer, examples, data = val_encoded
    sampler = EpisodeSampler(by_relation(data.items, [ex.label for ex in examples]), 5, 1, 2, seed=0)
    seed_everything(0)

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(len(tokenizer) + 60, 16)

        def forward(self, input_ids, attention_mask, head_pos, tail_pos):
            return (self.emb(input_ids) * attention_mask[..., None]).sum(1)

    loader = make_loader(EpisodeBatches(sampler, 48), 4, shuffle=False, collate_fn=EpisodeCollator(0))
    result = fit(Bag(), PrototypicalTask(5, 1), loader, loader, None,
                 TrainConfig(lr=0.05, epochs=6, metric="accuracy", warmup_ratio=0.0))
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] * 0.5
    assert result.best_dev["accuracy"] > 0.8


def test_wiki80_training_relations_exclude_fewrel_val_wiki_on_the_real_files() -> None:
    val = load_dataset("fewrel").splits["val"]
    eval_pids = {ex.label for ex in val}
    fewrel_dir = Path(load_dataset("fewrel").files["val"]).parent
    examples, n_excluded, pids = wiki80_training_relations(eval_pids, fewrel_dir, None)
    assert len(eval_pids) == 16 and n_excluded == 16 and len(pids) == 80
    kept = {ex.label for ex in examples}
    assert len(kept) == 64 and not {pids[name] for name in kept} & eval_pids
    assert len(examples) == 64 * (49 + 70)  # train_0.1 (49 per relation) + dev (70 per relation)


def test_run_fewshot_end_to_end_and_seeded(tiny_bert: str, tmp_path: Path) -> None:
    cfg = FewshotConfig(data_dir=str(DATA), encoder=tiny_bert,
                        settings=FewshotSettings(train_episodes=16, eval_episodes=50, max_length=32,
                                                 training=TrainConfig(lr=1e-3, batch_size=4, epochs=1, seed=5,
                                                                      metric="accuracy")))
    a = run_fewshot(cfg, out_dir=tmp_path)
    b = run_fewshot(cfg)
    assert a["accuracy"] == b["accuracy"] and a["history"] == b["history"]
    assert a["test"]["n"] == 50 * 5 * 5 and a["n_eval_instances_encoded"] <= 100
    assert "5 Wiki80 relations not in fewrel" in a["trained_on"] and a["history"][0]["step"] == 4
    assert any("train_wiki.json is not available" in n for n in a["notes"])
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == a["accuracy"]
    zero = run_fewshot(cfg.replace(settings=cfg.settings.replace(train_episodes=0)))
    assert zero["history"] == [] and zero["trained_on"].startswith("nothing")


def test_cli_fewshot_prints_one_json_line(tiny_bert: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "recon.orchestration.cli.main", "fewshot", "--dataset", "fewrel", "--n-way", "3", "--k-shot",
         "2", "--format", "OnlyM", "--episodes", "20", "--seed", "1", "--train-episodes", "0",
         "--encoder", tiny_bert, "--data-dir", str(DATA), "--max-length", "32"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["n_way"] == 3 and out["k_shot"] == 2 and out["format"] == "OnlyM"
    assert out["test"]["n"] == 20 * 3 * 5 and 0.0 <= out["accuracy"] <= 1.0


def test_bad_config_is_a_user_error() -> None:
    from recon.core.errors import ReconError

    with pytest.raises(ReconError, match="few-shot evaluation supports"):
        FewshotConfig(dataset="semeval")
    with pytest.raises(ReconError, match="train_episodes"):
        FewshotSettings(train_episodes=-1)
