"""The one training loop: determinism, divergence, accumulation, best-dev test selection."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from recon.models.train.batching import Collator, EncodedDataset, EncodedExample
from recon.models.train.loop import ClassificationTask, FitResult, TrainingDiverged, evaluate, fit, make_loader, seed_everything
from recon.models.train.config import TrainConfig

torch.set_num_threads(1)
VOCAB, N_LABELS, KEYWORD0 = 40, 4, 30  # label k <=> token KEYWORD0 + k somewhere in the sentence


class BagModel(nn.Module):
    """Mean of token embeddings -> linear; takes the same inputs as the relation classifier."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(16, N_LABELS)

    def forward(self, input_ids, attention_mask, head_pos, tail_pos):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.emb(input_ids) * mask).sum(1) / mask.sum(1)
        return self.out(self.drop(pooled))


def toy_data(n: int, seed: int) -> EncodedDataset:
    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        length = int(torch.randint(4, 12, (1,), generator=gen))
        ids = torch.randint(1, 20, (length,), generator=gen).tolist()
        label = int(torch.randint(0, N_LABELS, (1,), generator=gen))
        ids[int(torch.randint(0, length, (1,), generator=gen))] = KEYWORD0 + label
        items.append(EncodedExample(tuple(ids), 0, 1, label))
    return EncodedDataset(items, [f"toy#{i}" for i in range(n)])


def loaders(batch: int = 8, seed: int = 0):
    collate = Collator(pad_id=0)
    return (make_loader(toy_data(64, 1), batch, shuffle=True, seed=seed, collate_fn=collate),
            make_loader(toy_data(32, 2), 16, shuffle=False, collate_fn=collate),
            make_loader(toy_data(32, 3), 16, shuffle=False, collate_fn=collate))


def run(seed: int, dropout: float = 0.1, **overrides) -> tuple[FitResult, BagModel]:
    cfg = TrainConfig(**{"lr": 0.05, "epochs": 3, "seed": seed, "metric": "accuracy",
                         "warmup_ratio": 0.0, **overrides})
    seed_everything(seed)
    model = BagModel(dropout)
    return fit(model, ClassificationTask(), *loaders(), cfg), model


def test_same_seed_same_result_bit_for_bit_and_different_seed_differs() -> None:
    a, model_a = run(42)
    b, model_b = run(42)
    c, model_c = run(43)
    assert a.history == b.history and a.test_predictions == b.test_predictions
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in c.history]
    assert any(not torch.equal(pa, pc) for pa, pc in zip(model_a.parameters(), model_c.parameters()))


def test_learns_the_keyword_task_and_reports_test_at_best_dev_epoch() -> None:
    seen = []

    class Recorder:
        def on_epoch_end(self, epoch, metrics):
            seen.append((epoch, metrics["dev_score"]))

        def on_train_end(self, result):
            seen.append(("end", result.best_epoch))

    cfg = TrainConfig(lr=0.05, epochs=6, metric="accuracy", warmup_ratio=0.0)
    seed_everything(0)
    model = BagModel()
    train, dev, test = loaders()
    result = fit(model, ClassificationTask(), train, dev, test, cfg, callbacks=[Recorder()])
    dev_scores = [s for e, s in seen[:-1]]
    assert [e for e, _ in seen[:-1]] == list(range(1, 7))
    assert seen[-1] == ("end", result.best_epoch)
    assert result.best_epoch == 1 + dev_scores.index(max(dev_scores))  # first epoch reaching the max
    assert result.best_dev["score"] == max(dev_scores)
    assert result.test_at_best["score"] >= 0.9
    # The model is left with the best-dev weights: re-evaluating reproduces both figures.
    assert evaluate(model, ClassificationTask(), dev, cfg)[0]["score"] == result.best_dev["score"]
    again, pairs = evaluate(model, ClassificationTask(), test, cfg)
    assert again == result.test_at_best and pairs == result.test_predictions
    assert len(result.test_predictions) == 32 and result.steps == 6 * 8


def test_test_is_scored_with_best_dev_weights_not_last_epoch() -> None:
    """Epoch 1 learns; later epochs ascend the loss, so the best dev epoch is 1, not the last."""
    train, dev, test = loaders()
    cfg = TrainConfig(lr=0.05, epochs=3, metric="accuracy", warmup_ratio=0.0, schedule="constant")

    class AscendAfterFirstEpoch(ClassificationTask):
        sign = 1.0

        def loss(self, model, batch):
            return self.sign * super().loss(model, batch)

    task = AscendAfterFirstEpoch()
    test_by_epoch = []

    class Probe:
        def on_epoch_end(self, epoch, metrics):
            test_by_epoch.append(evaluate(model, ClassificationTask(), test, cfg)[0])
            task.sign = -1.0

    seed_everything(0)
    model = BagModel()
    result = fit(model, task, train, dev, test, cfg, callbacks=[Probe()])
    dev_scores = [h["dev_score"] for h in result.history]
    assert result.best_epoch == 1 and dev_scores[0] > dev_scores[-1]
    assert result.test_at_best == test_by_epoch[0]
    assert result.test_at_best["score"] > test_by_epoch[-1]["score"]


class NaNAfter:
    """A task whose loss turns NaN at a chosen call."""

    def __init__(self, bad_call: int) -> None:
        self.calls, self.bad_call, self.inner = 0, bad_call, ClassificationTask()

    def loss(self, model, batch):
        self.calls += 1
        loss = self.inner.loss(model, batch)
        return loss * math.nan if self.calls == self.bad_call else loss

    def predict(self, model, batch):
        return self.inner.predict(model, batch)


def test_nan_loss_stops_with_epoch_and_step() -> None:
    seed_everything(0)
    train, dev, test = loaders()  # 8 batches per epoch
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 11") as info:
        fit(BagModel(), NaNAfter(11), train, dev, test, TrainConfig(epochs=3, metric="accuracy"))
    assert info.value.epoch == 2 and info.value.step == 11 and math.isnan(info.value.loss)


def test_infinite_learning_rate_diverges_cleanly() -> None:
    seed_everything(0)
    train, dev, test = loaders()
    cfg = TrainConfig(lr=1e30, epochs=2, optimizer="sgd", max_grad_norm=None, warmup_ratio=0.0,
                      metric="accuracy", weight_decay=0.0)
    with pytest.raises(TrainingDiverged, match="training diverged"):
        fit(BagModel(), ClassificationTask(), train, dev, test, cfg)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_gradient_accumulation_matches_a_larger_batch(optimizer: str) -> None:
    def train(batch: int, accum: int) -> BagModel:
        seed_everything(7)
        model = BagModel(dropout=0.0)
        train_loader, _, _ = loaders(batch=batch, seed=5)
        cfg = TrainConfig(lr=0.1, epochs=2, grad_accum=accum, optimizer=optimizer, seed=7,
                          metric="accuracy", warmup_ratio=0.25, cpu_bf16=False)  # the arithmetic, in float32
        result = fit(model, ClassificationTask(), train_loader, None, None, cfg)
        assert result.steps == 2 * 64 // 8 and result.test_at_best is None
        return model

    big, small = train(8, 1), train(4, 2)
    for pb, ps in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(pb, ps, rtol=1e-4, atol=1e-5)


def test_adamw_is_fused_on_cpu_and_matches_the_per_parameter_loop() -> None:
    from recon.models.train.optim import build_optimizer

    opt = build_optimizer(BagModel(), TrainConfig())
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]  # biases are not decayed
    assert not build_optimizer(BagModel(), TrainConfig(fused_adamw=False)).defaults["fused"]

    def train(fused: bool) -> BagModel:
        seed_everything(7)
        model = BagModel(dropout=0.0)
        train_loader, _, _ = loaders(batch=8, seed=5)
        fit(model, ClassificationTask(), train_loader, None, None,
            TrainConfig(lr=0.05, epochs=3, seed=7, metric="accuracy", fused_adamw=fused))
        return model

    seed_everything(7)
    start = BagModel(dropout=0.0).out.weight.detach().clone()
    fused, loop = train(True), train(False)
    assert not torch.allclose(fused.out.weight, start)  # it trained
    for pf, pl in zip(fused.parameters(), loop.parameters()):
        torch.testing.assert_close(pf, pl, rtol=1e-5, atol=1e-6)


def test_accumulation_differs_from_small_batch_steps() -> None:
    def final(batch: int, accum: int) -> torch.Tensor:
        seed_everything(7)
        model = BagModel(dropout=0.0)
        train_loader, _, _ = loaders(batch=batch, seed=5)
        fit(model, ClassificationTask(), train_loader, None, None,
            TrainConfig(lr=0.1, epochs=1, grad_accum=accum, seed=7, metric="accuracy"))
        return model.out.weight.detach().clone()

    assert not torch.allclose(final(4, 1), final(4, 2))


def test_max_train_steps_stops_early_and_short_last_group_is_averaged() -> None:
    seed_everything(0)
    train, dev, _ = loaders(batch=8)  # 8 batches, accum 3 -> groups 3,3,2 per epoch
    result = fit(BagModel(), ClassificationTask(), train, dev, None,
                 TrainConfig(epochs=4, grad_accum=3, max_train_steps=5, metric="accuracy"))
    assert result.steps == 5
    assert [h["step"] for h in result.history] == [3, 5]


def test_config_rejects_bad_values() -> None:
    from recon.core.errors import ReconError

    with pytest.raises(ReconError, match="grad_accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ReconError, match="optimizer"):
        TrainConfig(optimizer="adam")


def test_encode_examples_is_cached_pads_dynamically_and_names_bad_labels() -> None:
    from pathlib import Path

    from transformers import BertTokenizer

    from recon.core.errors import DataError
    from recon.data_prep.formats import InputFormat
    from recon.data_prep.registry import load_dataset
    from recon.data_prep.special_tokens import SpecialTokens
    from recon.models.train.batching import encode_examples

    fixture = Path(__file__).parent / "fixtures" / "training" / "keyword"
    tokenizer = BertTokenizer(str(fixture / "vocab.txt"))
    special = SpecialTokens.for_tokenizer(tokenizer)
    ds = load_dataset(path=str(fixture), kind="opennre")
    train = ds.splits["train"]
    key = ("keyword", "train", "C+M", "test_training")  # no other test uses this key
    a = encode_examples(train, InputFormat.CM, tokenizer, special, 32, ds.label2id(), cache_key=key)
    assert encode_examples(train[:3], InputFormat.CM, tokenizer, special, 32, ds.label2id(), cache_key=key) is a
    first = a[0]
    marker = tokenizer.convert_tokens_to_ids(special.head_start)
    assert first.input_ids[first.head_pos] == marker and first.label == ds.label2id()[train[0].label]
    batch = Collator(pad_id=0)([a[0], a[1], a[2]])
    width = max(len(a[i].input_ids) for i in range(3))
    assert batch["input_ids"].shape == (3, width) and batch["attention_mask"].sum().item() == sum(
        len(a[i].input_ids) for i in range(3))
    with pytest.raises(DataError, match=r"train\.txt, line 1, field 'relation'"):
        encode_examples(train[:1], InputFormat.CM, tokenizer, special, 32, {"no-such-label": 0})
