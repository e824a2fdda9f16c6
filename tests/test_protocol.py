"""The authors' protocol and recon's, point by point: golden renderings, truncation, the optimizer's
first steps against a hand-computed update, SemEval's official score, and how a protocol is chosen."""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import pytest
import torch

from recon.data_prep.encoding import WordPieceCache, encode
from recon.data_prep.example import Entity, RelationExample
from recon.data_prep.formats import InputFormat, render
from recon.data_prep.loaders import LoadReport, load_file
from recon.core.protocol import POINTS, PROTOCOL_NAMES, describe, point_fields, protocol_layer
from recon.data_prep.special_tokens import SpecialTokens

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _semeval_test_line_1() -> RelationExample:
    """SemEval test.txt line 1, read by the real loader: "the most common audits were about waste and recycling ."."""
    path = SHARED / "semeval" / "test.txt"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "recon-protocol-line1.txt"
    tmp.write_text(first + "\n", encoding="utf-8")
    return next(iter(load_file(tmp, "opennre", "raise", LoadReport(path=str(tmp)))))


def _typed() -> RelationExample:
    """Bill Gates founded Microsoft . with annotated types (hand-written)."""
    return RelationExample(("bill", "gates", "founded", "microsoft", "."),
                           Entity(0, 2, type="PERSON", type_source="annotation"),
                           Entity(3, 4, type="ORG", type_source="annotation"), "founded_by")


def _tokens(tok, example, fmt, *, markers: bool, max_length: int = 100, truncation: str = "window"):
    tokenizer, special, pieces = tok
    enc = encode(render(example, fmt, special, placeholder_markers=markers), pieces, max_length, truncation)
    return " ".join(tokenizer.convert_ids_to_tokens(list(enc.input_ids))), enc.head_pos, enc.tail_pos, enc


# ---------------------------------------------------------------- golden renderings

SEMEVAL_GOLDEN = {
    # (format, placeholder_markers): (token sequence, head position, tail position)
    ("C+M", False): ("[CLS] the most common [unused0] audit ##s [unused1] were about [unused2] waste [unused3] and "
                     "recycling . [SEP]", 4, 10),
    ("C+M", True): ("[CLS] the most common [unused0] audit ##s [unused1] were about [unused2] waste [unused3] and "
                    "recycling . [SEP]", 4, 10),
    ("OnlyC", False): ("[CLS] the most common [unused4] were about [unused5] and recycling . [SEP]", 4, 7),
    ("OnlyC", True): ("[CLS] the most common [unused0] [unused4] [unused1] were about [unused2] [unused5] [unused3] "
                      "and recycling . [SEP]", 4, 9),  # the issue's example, as the authors' code renders it
    ("OnlyM", False): ("[CLS] [unused0] audit ##s [unused1] [unused2] waste [unused3] [SEP]", 1, 5),
    ("OnlyM", True): ("[CLS] [unused0] audit ##s [unused1] [unused2] waste [unused3] [SEP]", 1, 5),
}


@pytest.mark.parametrize("fmt,markers", sorted(SEMEVAL_GOLDEN))
def test_golden_semeval_renderings_in_both_protocols(tok, fmt, markers):
    text, head, tail, _ = _tokens(tok, _semeval_test_line_1(), InputFormat.parse(fmt), markers=markers)
    assert (text, head, tail) == SEMEVAL_GOLDEN[(fmt, markers)]


def test_golden_typed_renderings_in_both_protocols(tok):
    _, special, _ = tok
    person, org = special.type_token("subj", "PERSON"), special.type_token("obj", "ORG")
    assert (person, org) == ("[unused12]", "[unused19]")  # recon's type slots: [unused{10+id}]
    golden = {
        ("C+T", False): (f"[CLS] {person} founded {org} . [SEP]", 1, 3),
        ("C+T", True): (f"[CLS] [unused0] {person} [unused1] founded [unused2] {org} [unused3] . [SEP]", 1, 5),
        ("OnlyT", False): (f"[CLS] {person} {org} [SEP]", 1, 2),
        ("OnlyT", True): (f"[CLS] [unused0] {person} [unused1] [unused2] {org} [unused3] [SEP]", 1, 4),
    }
    for (fmt, markers), expected in golden.items():
        text, head, tail, _ = _tokens(tok, _typed(), InputFormat.parse(fmt), markers=markers)
        assert (text, head, tail) == expected, (fmt, markers)


def test_tail_first_example_keeps_roles_in_both_renderings(tok):
    ex = _typed()
    swapped = RelationExample(ex.tokens, ex.tail, ex.head, ex.label)  # head after tail in the sentence
    text, head, tail, _ = _tokens(tok, swapped, InputFormat.ONLYC, markers=True)
    assert text == "[CLS] [unused2] [unused5] [unused3] founded [unused0] [unused4] [unused1] . [SEP]"
    assert (head, tail) == (5, 1)


# ---------------------------------------------------------------- truncation

def test_cut_truncation_is_the_authors_and_window_keeps_both_entities(tok):
    ex = _semeval_test_line_1()
    # 17 pieces in C+M; at 8 the authors' cut keeps the first 8, drops [SEP] and clamps the tail to 7: the
    # relation's tail is read from the head's end marker.
    text, head, tail, enc = _tokens(tok, ex, InputFormat.CM, markers=False, max_length=8, truncation="cut")
    assert text == "[CLS] the most common [unused0] audit ##s [unused1]"
    assert (head, tail) == (4, 7) and enc.truncated and enc.marker_cut and enc.entity_truncated
    text, head, tail, enc = _tokens(tok, ex, InputFormat.CM, markers=False, max_length=12, truncation="window")
    assert text == "[CLS] common [unused0] audit ##s [unused1] were about [unused2] waste [unused3] [SEP]"
    assert (head, tail) == (2, 8) and enc.truncated and not enc.marker_cut and not enc.entity_truncated
    # When it fits, both truncations give the same ids.
    short = [_tokens(tok, ex, InputFormat.CM, markers=False, truncation=t)[:3] for t in ("cut", "window")]
    assert short[0] == short[1]


def test_cut_truncation_on_real_semeval_dev_and_test(tok):
    """At the authors' length 64 (MiniLM's vocabulary is bert-base-uncased's): 29 of SemEval's 4,210 dev and
    test examples in C+M are longer; the cut drops their [SEP] and, for 3, a start marker, so their relation is
    read from an ordinary word. The window keeps every marker."""
    tokenizer, special, pieces = tok
    examples = []
    for split in ("dev", "test"):
        path = SHARED / "semeval" / f"{split}.txt"
        examples += list(load_file(path, "opennre", "raise", LoadReport(path=str(path))))
    cut = [encode(render(ex, InputFormat.CM, special), pieces, 64, "cut") for ex in examples]
    window = [encode(render(ex, InputFormat.CM, special), pieces, 64, "window") for ex in examples]
    assert len(examples) == 4210
    assert sum(e.truncated for e in cut) == sum(e.truncated for e in window) == 29
    assert sum(e.marker_cut for e in cut) == 3 and sum(e.marker_cut for e in window) == 0
    assert all(e.input_ids[-1] != tokenizer.sep_token_id for e in cut if e.truncated)


# ---------------------------------------------------------------- the optimizer

def _reference_uncorrected(p0, grads, lr, eps, wd, betas=(0.9, 0.999)):
    """transformers 3.0.2 ``AdamW(correct_bias=False)``, written out in float64."""
    p = [float(x) for x in p0]
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    out = []
    for g in grads:
        for i, gi in enumerate(g):
            m[i] = betas[0] * m[i] + (1 - betas[0]) * gi
            v[i] = betas[1] * v[i] + (1 - betas[1]) * gi * gi
            p[i] = p[i] - lr * m[i] / (math.sqrt(v[i]) + eps)
            p[i] = p[i] - lr * wd * p[i]
        out.append(list(p))
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_uncorrected_adamw_first_steps_match_the_hand_computed_update(fused):
    from recon.models.train.optim import UncorrectedAdamW

    p0, lr, eps, wd = [0.5, -1.0, 2.0], 1e-3, 1e-8, 0.01
    grads = [[0.1, -0.2, 0.3], [0.2, -0.2, 0.15], [-0.05, 0.4, 0.1]]
    param = torch.nn.Parameter(torch.tensor(p0))
    opt = UncorrectedAdamW([param], lr=lr, eps=eps, weight_decay=wd, fused=fused or None)
    expected = _reference_uncorrected(p0, grads, lr, eps, wd)
    # Step 1 by hand: m = 0.1 g, v = 0.001 g^2, so the step is lr * 0.1 / sqrt(0.001) = 3.162 lr per weight
    # (against lr for bias-corrected Adam), then the decay.
    assert expected[0][0] == pytest.approx((0.5 - lr * 0.1 / math.sqrt(0.001)) * (1 - lr * wd), rel=1e-6)
    for g, want in zip(grads, expected):
        param.grad = torch.tensor(g)
        opt.step()
        assert param.detach().tolist() == pytest.approx(want, rel=2e-6, abs=1e-7)
        assert opt.param_groups[0]["lr"] == lr and opt.param_groups[0]["eps"] == eps  # restored after the step


def test_bias_correction_is_torchs_adamw_and_the_uncorrected_steps_are_larger():
    from recon.models.train.config import TrainConfig
    from recon.models.train.optim import build_optimizer

    def first_update(correct: bool) -> float:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        before = model.weight.detach().clone()
        opt = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.0, adam_bias_correction=correct))
        model(torch.ones(3, 4)).sum().backward()
        opt.step()
        return float((model.weight.detach() - before).abs().mean())

    assert isinstance(build_optimizer(torch.nn.Linear(2, 2), TrainConfig()), torch.optim.AdamW)
    assert first_update(True) == pytest.approx(1e-3, rel=1e-3)  # |lr * sign(g)| at step 1
    assert first_update(False) / first_update(True) == pytest.approx(0.1 / math.sqrt(0.001), rel=1e-3)


def test_uncorrected_adamw_resumes_from_its_state_dict_exactly():
    from recon.models.train.optim import UncorrectedAdamW

    def run(steps, opt_state=None, p_state=None):
        p = torch.nn.Parameter(torch.tensor([1.0, -2.0])) if p_state is None else torch.nn.Parameter(p_state.clone())
        opt = UncorrectedAdamW([p], lr=1e-2, weight_decay=1e-5, fused=True)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        for g in steps:
            p.grad = torch.tensor(g)
            opt.step()
        return p.detach().clone(), opt.state_dict()

    grads = [[0.3, -0.1], [0.2, 0.2], [-0.1, 0.5], [0.05, 0.05]]
    whole, _ = run(grads)
    half, state = run(grads[:2])
    resumed, _ = run(grads[2:], state, half)
    assert torch.equal(whole, resumed)


# ---------------------------------------------------------------- SemEval's official score

def test_semeval_official_score_by_hand():
    from recon.models.train.metrics import semeval_official

    golds = ["Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Cause-Effect(e1,e2)", "Other",
             "Component-Whole(e2,e1)", "Component-Whole(e2,e1)", "Message-Topic(e1,e2)"]
    preds = ["Cause-Effect(e1,e2)",   # right
             "Cause-Effect(e1,e2)",   # right type, wrong direction: counts against P and R of Cause-Effect
             "Other",                 # missed
             "Component-Whole(e1,e2)",  # a prediction of Component-Whole on an Other example
             "Component-Whole(e2,e1)",  # right
             "Instrument-Agency(e1,e2)",  # a type that is not in the key: never averaged
             "Message-Topic(e1,e2)"]    # right
    # Cause-Effect: correct 1, predicted 2 (both directions), gold 3 -> P 1/2, R 1/3, F1 0.4
    # Component-Whole: correct 1, predicted 2, gold 2 -> 0.5; Message-Topic: 1/1, 1/1 -> 1.0
    assert semeval_official(golds, preds) == pytest.approx((0.4 + 0.5 + 1.0) / 3)


def test_official_score_bootstraps_like_the_direct_computation():
    import numpy as np

    from recon.models.train.metrics import SEMEVAL_OFFICIAL, example_counts, score_from_counts, semeval_official

    rng = np.random.default_rng(0)
    labels = ["Other", "A(e1,e2)", "A(e2,e1)", "B(e1,e2)", "C(e2,e1)"]
    golds = list(rng.choice(labels, 200))
    preds = list(rng.choice(labels, 200))
    counts, types = example_counts(golds, preds, SEMEVAL_OFFICIAL, "Other")
    assert types == ["A", "B", "C"] and counts.shape == (200, 3, 3)
    idx = rng.integers(0, 200, 200)
    weights = np.bincount(idx, minlength=200).astype(float)
    direct = semeval_official([golds[i] for i in idx], [preds[i] for i in idx])
    assert float(score_from_counts(np.tensordot(weights, counts, axes=1))) == pytest.approx(direct)


# ---------------------------------------------------------------- choosing a protocol

def test_every_point_has_one_value_per_protocol_and_fields_default_to_the_default_protocol():
    from recon.models.train.finetune_config import FinetuneConfig
    from recon.core.protocol import DEFAULT_PROTOCOL

    for point in POINTS.values():
        assert set(point.values) == set(PROTOCOL_NAMES)
    found = {point for _, point in point_fields(FinetuneConfig)}
    assert found == set(POINTS)  # a fine-tuning run carries every point
    assert describe(FinetuneConfig()) == DEFAULT_PROTOCOL


def test_a_flag_given_explicitly_wins_over_the_protocol():
    from recon.models.train.finetune_config import FinetuneConfig
    from recon.orchestration.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["finetune", "--protocol", "authors", "--truncation", "window"])
    from recon.orchestration.cli.flags import config_from_args

    cfg = config_from_args(FinetuneConfig, args, args.config_flags)
    assert cfg.training.adam_bias_correction is False and cfg.data.placeholder_markers is True
    assert cfg.head.dropout == 0.0 and cfg.head.init == "torch" and cfg.data.scorer == "official"
    assert cfg.data.truncation == "window"
    assert describe(cfg) == "authors, except data.truncation=window"


def test_study_protocol_is_a_layer_and_changes_every_trial_id(tmp_path):
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec

    base = ("name: p\nencoder: minilm\nmodels: [{name: MiniLM}]\n"
            "pretrain: {cp: {objective: cp, steps: 2, batch_size: 4}}\n"
            "grids: [{datasets: [semeval], splits: [0.1], formats: [C+M, OnlyC]}]\nseeds: [42]\n")
    files = {}
    for name, extra in {"recon": "", "authors": "protocol: authors\n",
                        "explicit": ("data: {truncation: cut, placeholder_markers: true, scorer: official}\n"
                                     "head: {dropout: 0.0, init: torch}\ntraining: {adam_bias_correction: false}\n")
                        }.items():
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(base + extra, encoding="utf-8")
    specs = {name: load_spec(path) for name, path in files.items()}
    assert specs["authors"].pretrain["cp"].adam_bias_correction is False
    assert specs["authors"].pretrain["cp"].truncation == "cut"
    ids = {name: [t.trial_id for t in expand(spec)] for name, spec in specs.items()}
    assert not set(ids["recon"]) & set(ids["authors"])
    assert ids["explicit"] == ids["authors"]  # the resolved settings are the identity, not the protocol's name
    trials = expand(specs["authors"])
    assert {t.metric for t in trials} == {"semeval_official"} and {t.metric for t in expand(specs["recon"])} == {"micro_f1"}


def test_changing_only_the_scorer_keeps_the_trial_ids(tmp_path):
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec

    base = ("name: p\nmodels: [{name: MiniLM}]\ngrids: [{datasets: [semeval], splits: [0.1]}]\nseeds: [42]\n")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(base, encoding="utf-8")
    b.write_text(base + "data: {scorer: official}\n", encoding="utf-8")
    (ta,), (tb,) = expand(load_spec(a)), expand(load_spec(b))
    assert ta.trial_id == tb.trial_id and (ta.metric, tb.metric) == ("micro_f1", "semeval_official")


def test_shipped_paper_study_uses_the_authors_protocol():
    from recon.orchestration.study.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / "paper.yaml")
    assert spec.protocol == "authors" and spec.training.adam_bias_correction is False
    assert spec.data.truncation == "cut" and spec.data.scorer == "official"
    assert all(stage.adam_bias_correction is False for stage in spec.pretrain.values())


def test_finetune_in_the_authors_protocol_logs_both_scores(tmp_path, capsys):
    from recon.orchestration.cli.main import main

    rc = main(["finetune", "--dataset", "semeval", "--split", "0.01", "--format", "OnlyC", "--protocol", "authors",
               "--max-train-steps", "2", "--batch-size", "8", "--max-eval", "40", "--max-length", "32",
               "--epochs", "1", "--out", str(tmp_path / "run")])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["protocol"] == "authors"
    assert {"micro_f1", "semeval_official"} <= set(metrics["test"]) and {"micro_f1", "semeval_official"} <= set(metrics["dev"])
    assert metrics["reported"]["metric"] == "semeval_official"
    assert metrics["reported"]["test"] == metrics["test"]["semeval_official"]
    assert metrics["train_config"]["adam_bias_correction"] is False
    assert line["reported"]["metric"] == "semeval_official"
