"""One typed configuration tree: every config field documented and defaulted, every generated flag a
config field, fields that reach the code using them, paper defaults resolved, spec errors located."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import pkgutil
import re
import typing
from pathlib import Path

import pytest

import recon.core
import recon.data_prep
import recon.models
import recon.orchestration
from recon.core.config import CLI, HELP, Config, ConfigError, config_class

ROOT = Path(__file__).resolve().parents[1]
KEYWORD = Path(__file__).parent / "fixtures" / "training" / "keyword"

# Every config class the issue names; discovery below must find at least these.
KNOWN = {"TrainConfig", "DataOptions", "CnnTraining", "FinetuneConfig", "FewshotSettings", "FewshotConfig",
         "PretrainConfig", "PretrainRun", "RayConfig", "CorpusBuildConfig", "CorpusDemoConfig"}
# A module that may define a config imports the configuration module or subclasses a *Config class.
DEFINES_CONFIG = re.compile(r"core.config import|^class \w+\([^)]*Config\b", re.MULTILINE)


def _config_modules() -> list[str]:
    """recon modules whose source may define a Config subclass (read as text: nothing heavy imported)."""
    names = []
    for package in (recon.core, recon.data_prep, recon.models, recon.orchestration):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            spec = importlib.util.find_spec(info.name)
            if spec is None or not spec.origin or not spec.origin.endswith(".py"):
                continue
            if DEFINES_CONFIG.search(Path(spec.origin).read_text(encoding="utf-8")):
                names.append(info.name)
    return names


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def all_config_classes() -> list[type]:
    for name in _config_modules():
        importlib.import_module(name)
    found = [c for c in _subclasses(Config) if c.__module__.startswith("recon.")]
    return sorted(found, key=lambda c: (c.__module__, c.__qualname__))


CONFIGS = all_config_classes()


def test_discovery_finds_every_known_config_class():
    assert KNOWN <= {c.__name__ for c in CONFIGS}, sorted(c.__name__ for c in CONFIGS)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_a_default_and_help(cls):
    assert dataclasses.is_dataclass(cls)
    for f in dataclasses.fields(cls):
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        assert has_default, f"{cls.__name__}.{f.name} has no default"
        assert (f.metadata.get(HELP) or "").strip(), f"{cls.__name__}.{f.name} has no help text"
    cls()  # and the defaults satisfy the class's own constraints


# ---------------------------------------------------------------- generated flags are config fields

def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def _resolve(cls: type, dotted: str) -> dataclasses.Field:
    """The leaf field a dotted path names (``training.lr`` -> TrainConfig.lr), or AssertionError."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        hints = typing.get_type_hints(cls)
        assert part in hints, f"{dotted}: {cls.__name__} has no field {part!r}"
        sub = config_class(hints[part])
        assert sub is not None, f"{dotted}: {cls.__name__}.{part} is not a nested config"
        cls = sub
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert leaf in fields, f"{dotted}: {cls.__name__} has no field {leaf!r}"
    assert config_class(typing.get_type_hints(cls)[leaf]) is None, f"{dotted} is a nested config, not a value"
    return fields[leaf]


def _cli_leaves(cls: type, prefix: str = "") -> set[str]:
    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get(CLI, True):
            continue
        sub = config_class(hints[f.name])
        out |= _cli_leaves(sub, f"{prefix}{f.name}.") if sub else {f"{prefix}{f.name}"}
    return out


def _generated_commands():
    from recon.data_prep.corpus.config import DEMO_SETS, CorpusBuildConfig, CorpusDemoConfig
    from recon.models.train.fewshot import FewshotConfig
    from recon.models.train.finetune_config import FinetuneConfig
    from recon.orchestration.pretrain.run import PretrainRun

    # (command path, config class, the command's own options, config fields the command sets itself)
    return [
        (("finetune",), FinetuneConfig, {"out", "protocol"}, set()),  # --protocol: a layer of point values
        (("fewshot",), FewshotConfig, {"out", "protocol"}, set()),
        (("pretrain",), PretrainRun, {"protocol"}, set()),
        (("corpus", "build"), CorpusBuildConfig, set(), set()),
        (("corpus", "demo"), CorpusDemoConfig, set(), {f"build.{name}" for name in DEMO_SETS}),
    ]


@pytest.mark.parametrize("command,cls,own,set_by_command", _generated_commands(),
                         ids=[" ".join(c[0]) for c in _generated_commands()])
def test_every_flag_is_a_config_field_and_every_field_a_flag(command, cls, own, set_by_command):
    from recon.orchestration.cli.main import build_parser

    parser = _subparser(build_parser(), *command)
    dests = set()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest in own:
            continue
        field = _resolve(cls, action.dest)
        assert field.metadata.get(CLI, True), f"{action.dest} is cli=False but has a flag"
        assert action.default is argparse.SUPPRESS, f"{action.option_strings}: an omitted flag must leave " \
                                                     "the config's default in force"
        dests.add(action.dest)
    assert dests == _cli_leaves(cls) - set_by_command
    # The command's own options are few and are not config fields.
    assert own == {a.dest for a in parser._actions if a.dest in own}


# ---------------------------------------------------------------- fields reach the code that uses them

@pytest.fixture
def captured_fit(monkeypatch):
    """Run the real training loop, but keep the model and the loop config each run_finetune hands it."""
    import recon.models.train.loop as training

    calls: list[dict] = []
    real_fit = training.fit

    def fit(model, task, train, dev, test, config, *args, **kwargs):
        calls.append({"model": model, "train": train, "config": config})
        return real_fit(model, task, train, dev, test, config, *args, **kwargs)

    monkeypatch.setattr(training, "fit", fit)
    return calls


def _cnn_run(**cnn):
    import torch

    from recon.models.train.finetune_config import CnnTraining, DataOptions, FinetuneConfig
    from recon.models.train.finetune import run_finetune
    from recon.models.train.config import TrainConfig

    torch.set_num_threads(1)
    cfg = FinetuneConfig(dataset=None, path=str(KEYWORD), kind="opennre", model="cnn",
                         cnn=CnnTraining(**{"epochs": 1, "batch_size": 16, "word_vectors": "random", **cnn}),
                         data=DataOptions(max_length=32, max_train=20, max_eval=8),
                         training=TrainConfig(seed=1, device="cpu", progress=False))
    return run_finetune(cfg)


def _conv_widths(model) -> set[int]:
    import torch

    return {m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv1d)}


def test_cnn_hidden_size_sets_the_convolution_width(captured_fit):
    _cnn_run(hidden_size=7)
    _cnn_run(hidden_size=11)
    assert [_conv_widths(c["model"]) for c in captured_fit] == [{7}, {11}]


def test_data_max_train_caps_the_training_examples(captured_fit):
    from recon.models.train.finetune_config import CnnTraining, DataOptions, FinetuneConfig
    from recon.models.train.finetune import run_finetune
    from recon.models.train.config import TrainConfig

    base = dict(dataset=None, path=str(KEYWORD), kind="opennre", model="cnn",
                cnn=CnnTraining(epochs=1, batch_size=16, max_train_steps=1, word_vectors="random"),
                training=TrainConfig(seed=1, device="cpu", progress=False))
    capped = run_finetune(FinetuneConfig(**base, data=DataOptions(max_length=32, max_train=13, max_eval=8)))
    whole = run_finetune(FinetuneConfig(**base, data=DataOptions(max_length=32, max_eval=8)))
    assert capped["n_train"] == 13 and whole["n_train"] == 160  # the fixture's whole training file
    assert [len(c["train"].dataset) for c in captured_fit] == [13, 160]  # what the loop trained on


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer hidden-32 BERT over the keyword fixture's vocabulary."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = BertTokenizer(str(KEYWORD / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         vocab_size=len(tokenizer), max_position_embeddings=64)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("max_grad_norm", [0.25, None])
def test_training_max_grad_norm_reaches_the_loop(tiny_bert, monkeypatch, max_grad_norm):
    import torch

    from recon.models.train.finetune_config import DataOptions, FinetuneConfig
    from recon.models.train.finetune import run_finetune
    from recon.models.train.config import TrainConfig

    torch.set_num_threads(1)
    norms: list = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(parameters, max_norm, *args, **kwargs):
        norms.append(max_norm)
        return real_clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    cfg = FinetuneConfig(dataset=None, path=str(KEYWORD), kind="opennre", encoder=tiny_bert,
                         data=DataOptions(max_length=32, max_train=16, max_eval=8),
                         training=TrainConfig(epochs=1, batch_size=8, max_train_steps=2, seed=3, device="cpu",
                                              progress=False, max_grad_norm=max_grad_norm))
    out = run_finetune(cfg)
    assert out["steps"] == 2
    assert norms == ([max_grad_norm] * 2 if max_grad_norm is not None else [])


# ---------------------------------------------------------------- paper defaults on the command line

@pytest.mark.parametrize("objective,batch,steps", [("mtb", 256, 30_000), ("cp", 2048, 3500)])
def test_pretrain_flags_resolve_the_papers_batch_and_steps(objective, batch, steps):
    from recon.orchestration.cli.main import build_parser
    from recon.orchestration.cli.commands.pretrain import config_from_args

    args = build_parser().parse_args(["pretrain", "--objective", objective, "--corpus", "X"])
    cfg = config_from_args(args)
    assert (cfg.objective, cfg.corpus, cfg.batch_size, cfg.steps) == (objective, "X", batch, steps)
    # A flag given overrides only its own field; the other objective default still applies.
    args = build_parser().parse_args(["pretrain", "--objective", objective, "--corpus", "X", "--batch-size", "64"])
    assert (config_from_args(args).batch_size, config_from_args(args).steps) == (64, steps)


def test_corpus_build_flags_build_the_config():
    from recon.data_prep.corpus.config import CorpusBuildConfig
    from recon.orchestration.cli.main import build_parser
    from recon.orchestration.cli.flags import config_from_args

    args = build_parser().parse_args(["corpus", "build", "--text", "t.jsonl", "--out", "c", "--exclude", "wiki80",
                                      "fewrel", "--num-cpus", "2", "--format", "parquet"])
    cfg = config_from_args(CorpusBuildConfig, args, args.config_flags)
    assert (cfg.text, cfg.out, cfg.exclude, cfg.num_cpus, cfg.format) == ("t.jsonl", "c", ("wiki80", "fewrel"), 2,
                                                                          "parquet")
    assert CorpusBuildConfig().num_cpus is None  # default: all local CPUs
    # Each linking actor holds a CPU for the whole build: too few CPUs would hang Ray Data, so it is an error.
    args = build_parser().parse_args(["corpus", "build", "--num-cpus", "2", "--concurrency", "2"])
    with pytest.raises(ConfigError, match="--num-cpus: must be more than concurrency"):
        config_from_args(CorpusBuildConfig, args, args.config_flags)
    # Only what decides the corpus's content is hashed into its config.
    assert set(cfg.identity()) == {"exclude", "format", "shards"}


# ---------------------------------------------------------------- spec errors name file, line and field

SPEC_HEAD = "name: s\nmodels: [{name: BERT}]\ngrids: [{datasets: [semeval]}]\n"


@pytest.mark.parametrize("body,line,field,message", [
    ("training:\n  epochs: 2\n  lr: -1\n", 6, "training.lr", "must be > 0"),
    ("pretrain:\n  cp:\n    objective: cp\n    p_blank: 2\n", 7, "pretrain.cp.p_blank", "must be <= 1"),
    ("pretrain:\n  cp:\n    objective: cp\n    stepz: 3\n", 7, "pretrain.cp.stepz", ""),
    ("cnn:\n  hidden_size: 0\n", 5, "cnn.hidden_size", "must be >= 1"),
], ids=["training.lr", "pretrain.cp.p_blank", "pretrain.cp.unknown", "cnn.hidden_size"])
def test_component_config_errors_in_a_spec_name_file_line_and_field(tmp_path, body, line, field, message):
    from recon.orchestration.study.spec import SpecError, load_spec

    path = tmp_path / "study.yaml"
    path.write_text(SPEC_HEAD + body)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    text = str(err.value)
    assert str(path) in text and f"line {line}," in text and f"field '{field}'" in text, text
    assert message in text


def test_paper_study_plans_657_trials():
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec

    assert len(expand(load_spec(ROOT / "studies" / "paper.yaml"))) == 657


def test_an_integer_field_refuses_a_fraction_and_keeps_a_whole_float():
    """A YAML ``8.5`` for a batch size is a mistake to name, not a value to truncate; ``8.0`` is eight."""
    from recon.models.pretrain.config import PretrainConfig
    from recon.models.train.config import TrainConfig

    with pytest.raises(ConfigError, match="batch_size: must be a whole number, got 8.5"):
        PretrainConfig(batch_size=8.5)
    with pytest.raises(ConfigError, match="epochs: must be a whole number"):
        TrainConfig.from_dict({"epochs": 2.5})
    assert TrainConfig(epochs=2.0).epochs == 2 and TrainConfig(lr=3).lr == 3  # floats take ints as they are
