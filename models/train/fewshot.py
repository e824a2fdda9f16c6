"""N-way K-shot few-shot RE with prototypical networks (dot product), as a pure function of its config.

    from recon.models.train.fewshot import FewshotConfig, run_fewshot
    out = run_fewshot(FewshotConfig(dataset="fewrel", n_way=5, k_shot=1, eval_episodes=1000, train_episodes=0))
    out["accuracy"]

Training uses the one loop (``recon.models.train.loop.fit``) with :class:`PrototypicalTask`: a batch is
``batch_size`` episodes (4, as FewRel's recommended settings) encoded in one forward pass.

Training data: FewRel's ``train_wiki.json`` is not available locally. Wiki80 is FewRel's
train_wiki + val_wiki relations, so we train on the Wiki80 relations that are NOT evaluation
relations (matched by Wikidata PID through ``fewrel/pid2name.json``), using Wiki80's shipped
``train_0.1`` + ``dev`` examples of those 64 relations. ``train_episodes=0`` evaluates the encoder
as loaded. The result's ``trained_on`` and ``notes`` say which was done.

Evaluation: the encoder is frozen while scoring, so the relation representation of every
evaluation instance an episode needs is computed ONCE (eval mode, length-sorted batches) and the
10,000 episodes then only index into that table. The scores equal those of encoding every episode
separately (the same instance always gets the same vector) at a fraction of the cost.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from recon.core.config import Config, ConfigError, knob
from recon.core.defaults import DEFAULT_ENCODER
from recon.core.errors import DataError, ReconError
from recon.data_prep.formats import FORMATS_HELP, InputFormat
from recon.core.protocol import POINTS, point_default
from recon.data_prep.registry import fewshot_datasets

from recon.models.train.finetune_config import check_source_and_format
from recon.models.train.config import TrainConfig

def _fewshot_training() -> TrainConfig:
    """FewRel's prototypical-network training: lr 2e-5, 4 episodes per step, one pass over the episodes."""
    return TrainConfig(lr=2e-5, batch_size=4, epochs=1, metric="accuracy", eval_batch_size=64)


@dataclass
class FewshotSettings(Config):
    """How every few-shot setting of a study is trained and evaluated (FewRel's defaults)."""

    q_query: int = knob(5, "query instances per relation and episode (FewRel's default)", ge=1)
    max_length: int = knob(128, "word pieces per instance (FewRel's 128)", ge=8)
    truncation: Literal["window", "cut"] = knob(point_default("truncation"), POINTS["truncation"].help,
                                                choices=("window", "cut"), point="truncation")
    placeholder_markers: bool = knob(point_default("placeholder_markers"), POINTS["placeholder_markers"].help,
                                     point="placeholder_markers")
    train_episodes: int = knob(40_000, "training episodes (FewRel's train_iter 10,000 x batch 4); 0 = no training",
                               ge=0)
    eval_episodes: int = knob(10_000, "evaluation episodes (paper: 10,000)", ge=1)
    similarity: Literal["dot", "euclidean"] = knob("dot", "prototype similarity: dot (the paper) or euclidean "
                                                          "(Snell et al.)", choices=("dot", "euclidean"))
    training: TrainConfig = knob(factory=_fewshot_training, help="optimisation of prototypical training; "
                                                                 "batch_size counts episodes")


@dataclass
class FewshotConfig(Config):
    """One N-way K-shot evaluation (paper Table 6), optionally after prototypical training."""

    dataset: str | None = knob("fewrel", "fewrel (val_wiki) or fewrel-pubmed (val_pubmed); none with --path")
    path: str | None = knob(None, "a FewRel-format JSON file (or a directory holding val.json) to evaluate on")
    data_dir: str | None = knob(None, "where dataset folders live (default: see recon data)", identity=False)
    n_way: int = knob(5, "relations per episode (N)", ge=2)
    k_shot: int = knob(1, "support instances per relation (K)", ge=1)
    input_format: str = knob(InputFormat.CM.value, FORMATS_HELP)
    encoder: str = knob(DEFAULT_ENCODER, "encoder alias, Hugging Face directory or recon checkpoint")
    settings: FewshotSettings = knob(factory=FewshotSettings, help="episodes, lengths and training")
    source_identity: str | None = knob(None, "content identity of the starting checkpoint (a pre-training "
                                             "stage's hash)", cli=False)

    def check(self) -> None:
        super().check()
        check_source_and_format(self, "a path")
        if self.dataset is not None and self.dataset not in fewshot_datasets():
            raise ConfigError("dataset", f"few-shot evaluation supports {', '.join(fewshot_datasets())} "
                                         f"(or --path FILE), got {self.dataset!r}")

    @property
    def seed(self) -> int:
        return self.settings.training.seed

    @property
    def name(self) -> str:
        return self.dataset or Path(self.path or "").stem

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        if self.source_identity and self.encoder != DEFAULT_ENCODER:
            out["encoder"] = "checkpoint"
        return out


class PrototypicalTask:
    """Loss and predictions for a batch of episodes sharing one N-way K-shot Q-query shape.

    ``batch["inputs"]`` are the encoder inputs of every support instance (episode-major, class,
    shot) followed by every query instance (episode-major); ``batch["labels"]`` is ``[B, N*Q]``.
    """

    def __init__(self, n_way: int, k_shot: int, similarity: str = "dot") -> None:
        self.n_way, self.k_shot, self.similarity = n_way, k_shot, similarity

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        from recon.models.nets.protonet import proto_logits, prototypes

        reps = model(**batch["inputs"]).float()
        episodes = batch["labels"].size(0)
        n_support = episodes * self.n_way * self.k_shot
        support = reps[:n_support].view(episodes, self.n_way, self.k_shot, -1)
        query = reps[n_support:].view(episodes, -1, reps.size(-1))
        return torch.stack([proto_logits(query[e], prototypes(support[e]), self.similarity)
                            for e in range(episodes)])  # [B, N*Q, N]

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        logits = self.logits(model, batch)
        return nn.functional.cross_entropy(logits.reshape(-1, self.n_way), batch["labels"].reshape(-1))

    def predict(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits(model, batch).argmax(-1), batch["labels"]


class EpisodeBatches(torch.utils.data.Dataset):
    """Episode ``i`` of a sampler as a dataset item, so a DataLoader batches episodes."""

    def __init__(self, sampler, count: int) -> None:
        self.sampler, self.count = sampler, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        return self.sampler.episode(index)


class EpisodeCollator:
    """Episodes of encoded instances -> one padded forward batch (support first, then queries)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, episodes) -> dict:
        from recon.models.train.batching import pad_batch

        support = [x for ep in episodes for shots in ep.support for x in shots]
        query = [x for ep in episodes for x in ep.query]
        return {"inputs": pad_batch(support + query, self.pad_id),
                "labels": torch.tensor([ep.query_labels for ep in episodes], dtype=torch.long)}


class IndexCollator:
    """Episodes over instance *indices* -> a batch for :class:`RepresentationTable`."""

    def __call__(self, episodes) -> dict:
        support = [x for ep in episodes for shots in ep.support for x in shots]
        query = [x for ep in episodes for x in ep.query]
        return {"inputs": {"index": torch.tensor(support + query, dtype=torch.long)},
                "labels": torch.tensor([ep.query_labels for ep in episodes], dtype=torch.long)}


class RepresentationTable(nn.Module):
    """A frozen encoder's outputs looked up by instance index (``model(index=...)``)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.table[index]


@torch.no_grad()
def encode_table(model: nn.Module, data, indices: Sequence[int], batch_size: int, device: torch.device,
                 pad_id: int = 0, bf16: bool = True, cpu_bf16: bool = False) -> torch.Tensor:
    """Relation representations ``[len(data), D]`` for ``indices`` (other rows stay zero)."""
    from recon.models.train.batching import pad_batch
    from recon.models.train.loop import autocast, move_to

    model.eval().to(device)
    order = sorted(indices, key=lambda i: len(data[i].input_ids))
    table: torch.Tensor | None = None
    for lo in range(0, len(order), batch_size):
        chunk = order[lo:lo + batch_size]
        inputs = move_to(pad_batch([data[i] for i in chunk], pad_id), device)
        with autocast(device, bf16, cpu_bf16):
            reps = model(**inputs).float()
        if table is None:
            table = torch.zeros(len(data), reps.size(-1), device=device)
        table[torch.tensor(chunk, device=device)] = reps
    assert table is not None
    return table


def _by_relation(items: Sequence, labels: Sequence[str]) -> dict[str, list]:
    out: dict[str, list] = {}
    for item, label in zip(items, labels):
        out.setdefault(label, []).append(item)
    return out


def wiki80_training_relations(eval_relations: set[str], fewrel_dir: Path, data_dir: str | None):
    """Wiki80 train_0.1 + dev examples of the relations whose PID is not an evaluation relation."""
    from recon.data_prep.registry import load_dataset
    from recon.data_prep.splits import load_paper_subset

    wiki = load_dataset("wiki80", data_dir=data_dir)
    pid_file = fewrel_dir / "pid2name.json"
    if not pid_file.is_file():
        raise ReconError(f"{pid_file} is missing: it maps Wiki80 relation names to FewRel PIDs")
    name_to_pid: dict[str, list[str]] = {}
    for pid, entry in json.loads(pid_file.read_text(encoding="utf-8")).items():
        if not isinstance(entry, list) or not entry:
            raise DataError("expected [name, description]", path=pid_file, record=pid, field=pid)
        name_to_pid.setdefault(entry[0], []).append(pid)
    pids = {}
    for name in wiki.labels:
        found = name_to_pid.get(name, [])
        if len(found) != 1:
            raise DataError(f"Wiki80 relation {name!r} matches {len(found)} PIDs in pid2name.json ({found})",
                            path=wiki.files.get("rel2id"), field=name)
        pids[name] = found[0]
    keep = {name for name, pid in pids.items() if pid not in eval_relations}
    examples = [ex for ex in [*load_paper_subset(wiki, 0.1), *wiki.splits["dev"]] if ex.label in keep]
    return examples, len(wiki.labels) - len(keep), pids


def _ci95(preds: Sequence[tuple[int, int]], per_episode: int) -> float:
    """Half-width of the 95% normal interval of the mean per-episode accuracy."""
    accs = [sum(p == g for p, g in preds[i:i + per_episode]) / per_episode
            for i in range(0, len(preds), per_episode)]
    if len(accs) < 2:
        return float("nan")
    mean = sum(accs) / len(accs)
    var = sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)
    return 1.96 * math.sqrt(var / len(accs))


def _evaluation_examples(cfg: FewshotConfig) -> tuple[list, str]:
    """The evaluation instances and a name for caches: a registered set, or any FewRel-format file."""
    from recon.data_prep.loaders import LoadReport, load_file
    from recon.data_prep.registry import load_dataset

    if cfg.path is None:
        evalset = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
        if "val" not in evalset.splits:
            raise ReconError(f"dataset {cfg.dataset!r} has no evaluation file locally ({'; '.join(evalset.notes)})")
        return list(evalset.splits["val"]), str(cfg.dataset)
    path = Path(cfg.path).expanduser()
    if path.is_dir():
        candidates = [path / "val.json"] if (path / "val.json").is_file() else \
            [f for f in sorted(path.glob("*.json")) if f.name != "pid2name.json"]
        if len(candidates) != 1:
            raise ReconError(f"{path}: expected val.json or exactly one FewRel-format .json file, found "
                             f"{[c.name for c in candidates] or 'none'}")
        path = candidates[0]
    if not path.is_file():
        raise ReconError(f"{path}: no such FewRel-format file")
    from recon.core.hashing import file_sha256

    examples = list(load_file(path, "fewrel", "raise", LoadReport(path=str(path))))
    return examples, f"{path.stem}-{file_sha256(path)[:12]}"


def run_fewshot(cfg: FewshotConfig, callbacks: Sequence[Any] = (), out_dir=None) -> dict:
    """Train (optionally) and evaluate; returns JSON-able figures and writes ``metrics.json`` to ``out_dir``."""
    from recon.data_prep.datadir import resolve_dataset_dir
    from recon.data_prep.episodes import EpisodeSampler
    from recon.core.atomic import write_texts_or_keep
    from recon.data_prep.registry import get_spec

    from recon.core.protocol import describe

    from recon.models.train.batching import encode_examples
    from recon.models.nets.loading import load_encoder
    from recon.models.train.finetune_data import with_types
    from recon.models.train.loop import evaluate, fit, make_loader, resolve_device
    from recon.models.nets.seed import seed_everything

    start = time.perf_counter()
    fmt = InputFormat.parse(cfg.input_format)
    device = resolve_device(cfg.settings.training.device)
    eval_examples, eval_source = _evaluation_examples(cfg)
    eval_examples = with_types(eval_examples, fmt, f"{eval_source}:val")
    eval_relations = {ex.label for ex in eval_examples}
    notes: list[str] = []
    seed_everything(cfg.seed)  # added-token embeddings are sampled from the global RNG on resize
    bundle = load_encoder(cfg.encoder)
    seed_everything(cfg.seed)
    model = bundle.model
    pad_id = bundle.tokenizer.pad_token_id if bundle.tokenizer.pad_token_id is not None else 0
    tok_name = f"{bundle.source}:{len(bundle.tokenizer)}"
    rendering = {"truncation": cfg.settings.truncation, "placeholder_markers": cfg.settings.placeholder_markers}
    train_cfg = cfg.settings.training
    history: list[dict] = []
    trained_on = "nothing: the encoder as loaded (train_episodes=0)"
    if cfg.settings.train_episodes > 0:
        fewrel = get_spec(cfg.dataset or "fewrel")
        fewrel_dir = resolve_dataset_dir(fewrel.name, fewrel.directory, cfg.data_dir)
        train_examples, n_excluded, _ = wiki80_training_relations(eval_relations, fewrel_dir, cfg.data_dir)
        train_examples = with_types(train_examples, fmt, "wiki80:fewshot-train")
        train_data = encode_examples(train_examples, fmt, bundle.tokenizer, bundle.special, cfg.settings.max_length, None,
                                     cache_key=("wiki80-fewshot", eval_source, fmt.value, tok_name, *rendering.values(),
                                                cfg.settings.max_length), **rendering)
        by_rel = _by_relation(train_data.items, [ex.label for ex in train_examples])
        sampler = EpisodeSampler(by_rel, cfg.n_way, cfg.k_shot, cfg.settings.q_query, seed=cfg.seed)
        loader = make_loader(EpisodeBatches(sampler, cfg.settings.train_episodes), train_cfg.batch_size, shuffle=False,
                             seed=cfg.seed, collate_fn=EpisodeCollator(pad_id))
        trained_on = (f"{cfg.settings.train_episodes} {cfg.n_way}-way {cfg.k_shot}-shot episodes over {len(by_rel)} Wiki80 "
                      f"relations not in {cfg.name} ({len(train_examples)} examples of train_0.1 + dev; "
                      f"{n_excluded} evaluation relations excluded)")
        notes.append("FewRel train_wiki.json is not available locally; trained on Wiki80 relations instead")
        result = fit(model, PrototypicalTask(cfg.n_way, cfg.k_shot, cfg.settings.similarity), loader, None, None,
                     train_cfg, callbacks)
        history = result.history

    # Evaluation: episodes over instance indices; representations computed once.
    eval_data = encode_examples(eval_examples, fmt, bundle.tokenizer, bundle.special, cfg.settings.max_length, None,
                                cache_key=(eval_source, "val", fmt.value, tok_name, *rendering.values(),
                                           cfg.settings.max_length), **rendering)
    eval_sampler = EpisodeSampler(_by_relation(range(len(eval_examples)), [ex.label for ex in eval_examples]),
                                  cfg.n_way, cfg.k_shot, cfg.settings.q_query, seed=cfg.seed)
    needed: set[int] = set()
    for ep in eval_sampler.episodes(0, cfg.settings.eval_episodes):
        needed.update(x for shots in ep.support for x in shots)
        needed.update(ep.query)
    with torch.no_grad():
        table = encode_table(model, eval_data, sorted(needed), train_cfg.eval_batch_size, device, pad_id,
                             train_cfg.bf16, train_cfg.cpu_bf16)
    eval_loader = make_loader(EpisodeBatches(eval_sampler, cfg.settings.eval_episodes), 64, shuffle=False,
                              collate_fn=IndexCollator())
    test, preds = evaluate(RepresentationTable(table), PrototypicalTask(cfg.n_way, cfg.k_shot, cfg.settings.similarity),
                           eval_loader, train_cfg, device)
    if cfg.settings.eval_episodes < 10_000:
        notes.append(f"{cfg.settings.eval_episodes} evaluation episodes (paper: 10,000)")
    if eval_data.n_truncated:
        how = "cut (the authors' truncation)" if cfg.settings.truncation == "cut" else "windowed"
        notes.append(f"{eval_data.n_truncated} evaluation instances longer than {cfg.settings.max_length} tokens were {how}")
    out = {
        "dataset": cfg.name, "n_way": cfg.n_way, "k_shot": cfg.k_shot, "q_query": cfg.settings.q_query,
        "format": fmt.value, "encoder": cfg.encoder, "seed": cfg.seed, "similarity": cfg.settings.similarity,
        "protocol": describe(cfg),
        "accuracy": test["accuracy"], "accuracy_ci95": _ci95(preds, cfg.n_way * cfg.settings.q_query), "test": test,
        "chance": 1.0 / cfg.n_way, "eval_episodes": cfg.settings.eval_episodes, "train_episodes": cfg.settings.train_episodes,
        "trained_on": trained_on, "history": history, "n_eval_instances_encoded": len(needed),
        "device": str(device), "wall_s": round(time.perf_counter() - start, 3), "notes": notes,
        "config": asdict(cfg),
    }
    if out_dir is not None:
        kept, error = write_texts_or_keep(out_dir, {"metrics.json": json.dumps(out, indent=2) + "\n"})
        out["saved_to"], out["save_error"] = str(kept), error  # a failed write kept them elsewhere, named
    return out


__all__ = ["FewshotConfig", "FewshotSettings", "run_fewshot", "PrototypicalTask", "EpisodeCollator", "RepresentationTable",
           "encode_table", "wiki80_training_relations"]
