"""The pre-training step without Ray: batches from real pretrain_corpus sentences, CP/MTB + MLM losses,
gradient accumulation, cross-worker CP negatives, and a resumable training state."""
from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from recon.data_prep.corpus import load_corpus
from recon.data_prep.corpus.index import CorpusExample, CorpusIndex
from recon.data_prep.samplers import CPPair, CPSampler, Draw, MTBSampler
from recon.models.nets.checkpoint import load_checkpoint, save_checkpoint
from recon.models.nets.loading import load_encoder
from recon.models.pretrain.config import PretrainConfig
from recon.models.pretrain.state import load_train_state, read_train_state, save_train_state
from recon.models.pretrain.batches import IGNORE_INDEX, PretrainBatch, TokenContext, build_batch, relation_id, step_generator
from recon.models.pretrain.step import PretrainNet, StepSettings, micro_step_loss, optimizer_step, reseed_step
from recon.models.train.config import TrainConfig
from recon.models.train.optim import build_optimizer, build_scheduler
from tiny_bert import make_tiny_bert_dir

CORPUS = Path(__file__).parent / "fixtures" / "pretrain" / "corpus"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_bert_dir(tmp_path_factory.mktemp("enc"), mlm=True)


def _bundle(tiny_dir: Path, dropout: float | None = None):
    bundle = load_encoder(str(tiny_dir), mlm_head=True)
    if dropout is not None:
        for module in bundle.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = dropout
    return bundle


def _cp_batch(bundle, pretrain_corpus, pairs: int = 6, seed: int = 0, p_blank: float = 0.5, **kw) -> PretrainBatch:
    sampler = CPSampler(pretrain_corpus, pairs, p_blank=p_blank, seed=seed)
    return build_batch(sampler.next_batch(), pretrain_corpus, "cp", TokenContext.for_bundle(bundle, 64),
                       generator=step_generator(seed, 1, 0, 0), **kw)


def _mtb_index() -> CorpusIndex:
    """Sentences sharing entity pairs (MTB positives) built from real fixture tokens.

    24 distinct sentences: a batch never repeats a sentence, so 6 or 8 pairs need that many.
    """
    base = load_corpus(CORPUS).examples[:24]
    out = []
    for k, ex in enumerate(base):
        pair = ("Q1", "Q2") if k % 3 else ("Q1", "Q3")
        out.append(CorpusExample(ex.uid, ex.sentence_id, ex.tokens, ex.relation,
                                 replace(ex.head, id=pair[0]), replace(ex.tail, id=pair[1]), 0))
    return CorpusIndex.from_examples(out, num_shards=1)


def test_batch_layout_pairs_line_up_and_markers_sit_at_head_tail(tiny_dir, pretrain_corpus):
    bundle = _bundle(tiny_dir)
    sampler = CPSampler(pretrain_corpus, 5, p_blank=0.0, seed=3)
    pairs = sampler.next_batch()
    batch = build_batch(pairs, pretrain_corpus, "cp", TokenContext.for_bundle(bundle, 64), mlm_probability=0.0)
    assert batch.input_ids.shape[0] == 10 and batch.n_pairs == 5
    assert batch.relation_ids[:5].tolist() == batch.relation_ids[5:].tolist() == \
        [relation_id(p.relation) for p in pairs]
    ids = batch.input_ids
    rows = torch.arange(10)
    head_id, tail_id = bundle.tokenizer.convert_tokens_to_ids([bundle.special.head_start, bundle.special.tail_start])
    assert (ids[rows, batch.head_pos] == head_id).all() and (ids[rows, batch.tail_pos] == tail_id).all()
    assert batch.n_masked == 0 and (batch.mlm_labels == IGNORE_INDEX).all()
    # the second member of pair 0 is row 5, and it is the sampled sentence
    words = bundle.tokenizer.convert_ids_to_tokens(ids[5, batch.attention_mask[5].bool()].tolist())
    assert words[0] == bundle.tokenizer.cls_token and words[-1] == bundle.tokenizer.sep_token
    assert sum(w == bundle.special.head_start for w in words) == 1


def test_blanking_follows_each_draw(tiny_dir, pretrain_corpus):
    bundle = _bundle(tiny_dir)
    draws = [CPPair(Draw(0, True, False), Draw(1, False, True), pretrain_corpus[0].relation)]
    batch = build_batch(draws, pretrain_corpus, "cp", TokenContext.for_bundle(bundle, 64), mlm_probability=0.0)
    head_blank, tail_blank = bundle.tokenizer.convert_tokens_to_ids(
        [bundle.special.head_blank, bundle.special.tail_blank])
    assert batch.input_ids[0, batch.head_pos[0] + 1] == head_blank
    assert batch.input_ids[0, batch.tail_pos[0] + 1] != tail_blank
    assert batch.input_ids[1, batch.tail_pos[1] + 1] == tail_blank
    assert batch.input_ids[1, batch.head_pos[1] + 1] != head_blank


def test_mlm_masks_ordinary_tokens_but_never_markers_or_specials(tiny_dir, pretrain_corpus):
    bundle = _bundle(tiny_dir)
    ctx = TokenContext.for_bundle(bundle, 64)
    clean = _cp_batch(bundle, pretrain_corpus, pairs=8, mlm_probability=0.0)
    masked = _cp_batch(bundle, pretrain_corpus, pairs=8, mlm_probability=1.0)  # every eligible token selected
    protected = torch.isin(clean.input_ids, torch.tensor(ctx.protected_ids()))
    rows = torch.arange(clean.input_ids.size(0))
    protected[rows, clean.head_pos] = True
    protected[rows, clean.tail_pos] = True
    selected = masked.mlm_labels != IGNORE_INDEX
    assert not (selected & protected).any()
    assert torch.equal(masked.input_ids[protected], clean.input_ids[protected])
    specials = torch.isin(clean.input_ids, torch.tensor(bundle.tokenizer.all_special_ids))  # [UNK] too
    eligible = clean.attention_mask.bool() & ~protected & ~specials
    assert int(eligible.sum()) > 50
    assert torch.equal(selected, eligible)  # p = 1 selects every other real token
    assert torch.equal(masked.mlm_labels[selected], clean.input_ids[selected])
    mask_share = (masked.input_ids[selected] == ctx.mask_id).float().mean()
    assert 0.7 < mask_share < 0.9  # 80/10/10


@pytest.mark.parametrize("objective", ["cp", "mtb"])
def test_step_loss_is_finite_and_gradients_reach_every_layer(tiny_dir, pretrain_corpus, objective):
    bundle = _bundle(tiny_dir)
    net = PretrainNet(bundle.model)
    ctx = TokenContext.for_bundle(bundle, 64)
    if objective == "cp":
        batch = _cp_batch(bundle, pretrain_corpus, pairs=6)
    else:
        index = _mtb_index()
        batch = build_batch(MTBSampler(index, 6, seed=0).next_batch(), index, "mtb", ctx,
                            generator=step_generator(0, 1, 0, 0))
        assert batch.targets.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert batch.n_masked > 0
    loss, parts = micro_step_loss(net, batch, StepSettings(objective))
    assert math.isfinite(float(loss.detach())) and parts["objective_loss"] > 0 and parts["mlm_loss"] > 0
    assert 0.0 <= parts["accuracy"] <= 1.0
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_cp_loss_falls_when_training_on_real_sentences(tiny_dir, pretrain_corpus):
    torch.manual_seed(0)
    bundle = _bundle(tiny_dir, dropout=0.0)
    net = PretrainNet(bundle.model)
    cfg = TrainConfig(lr=2e-3, warmup_steps=0)
    opt = build_optimizer(net, cfg)
    sched = build_scheduler(opt, 40, cfg)
    sampler = CPSampler(pretrain_corpus, 8, p_blank=0.0, seed=0)
    ctx = TokenContext.for_bundle(bundle, 64)
    losses = []
    for step in range(40):
        batch = build_batch(sampler.next_batch(), pretrain_corpus, "cp", ctx, generator=step_generator(0, step, 0, 0))
        losses.append(optimizer_step(net, [batch], optimizer=opt, scheduler=sched,
                                     settings=StepSettings("cp", mlm_weight=0.0)).objective_loss)
    assert sum(losses[-10:]) / 10 < 0.85 * sum(losses[:5]) / 5  # measured: 2.73 -> 2.08


def _take(batch: PretrainBatch, pairs: list[int]) -> PretrainBatch:
    """Micro-batch of some pairs of ``batch`` (same padding width, same MLM masks)."""
    p = batch.n_pairs
    rows = torch.tensor(pairs + [p + i for i in pairs])
    return PretrainBatch(batch.input_ids[rows], batch.attention_mask[rows], batch.head_pos[rows],
                         batch.tail_pos[rows], batch.mlm_labels[rows], batch.relation_ids[rows],
                         batch.targets[torch.tensor(pairs)], len(pairs))


def _sgd_update(tiny_dir, micro_batches, objective) -> dict[str, torch.Tensor]:
    bundle = _bundle(tiny_dir, dropout=0.0)
    net = PretrainNet(bundle.model)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    optimizer_step(net, micro_batches, optimizer=opt, scheduler=None,
                   settings=StepSettings(objective, max_grad_norm=None))
    return {n: p.detach() - before[n] for n, p in net.named_parameters()}


def test_gradient_accumulation_equals_one_big_batch(tiny_dir):
    index = _mtb_index()
    bundle = _bundle(tiny_dir)
    big = build_batch(MTBSampler(index, 8, seed=1).next_batch(), index, "mtb", TokenContext.for_bundle(bundle, 64),
                      generator=step_generator(0, 1, 0, 0))
    halves = [_take(big, [0, 1, 4, 5]), _take(big, [2, 3, 6, 7])]
    whole, accumulated = _sgd_update(tiny_dir, [big], "mtb"), _sgd_update(tiny_dir, halves, "mtb")
    moved = sum(float(d.abs().sum()) for d in whole.values())
    assert moved > 0
    for name, delta in whole.items():
        torch.testing.assert_close(accumulated[name], delta, atol=2e-6, rtol=1e-4, msg=name)


def test_mlm_weighting_by_masked_share_matches_the_pooled_mean(tiny_dir, pretrain_corpus):
    """With unequal masked counts, the accumulated MLM term is the mean over all masked tokens."""
    bundle = _bundle(tiny_dir, dropout=0.0)
    net = PretrainNet(bundle.model).eval()
    big = _cp_batch(bundle, pretrain_corpus, pairs=6)
    parts = [_take(big, [0, 1]), _take(big, [2, 3, 4, 5])]
    assert parts[0].n_masked != parts[1].n_masked
    settings = StepSettings("mtb", mlm_weight=1.0)
    total = sum(b.n_masked for b in parts)

    def mlm_only(batch, share):
        b = replace(batch, targets=torch.zeros(batch.n_pairs))
        with torch.no_grad():
            loss, info = micro_step_loss(net, b, settings, share)
        return float(loss) - info["objective_loss"]

    accumulated = sum(mlm_only(b, 2 * b.n_masked / total) for b in parts) / 2
    pooled = mlm_only(big, 1.0)
    assert accumulated == pytest.approx(pooled, rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gathered_cp_grads(rank: int, world: int, port: int, tiny_dir: str, batch_file: str, out_file: str,
                       split: tuple[int, ...]) -> None:
    """Worker of the 2-process test: CP on its share of the pairs (``split``), negatives gathered, DDP-averaged."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        big = PretrainBatch(**{k: (torch.tensor(v) if isinstance(v, list) else v)
                               for k, v in json.loads(Path(batch_file).read_text()).items()})
        first = sum(split[:rank])
        mine = _take(big, list(range(first, first + split[rank])))
        net = DistributedDataParallel(PretrainNet(_bundle(Path(tiny_dir), dropout=0.0).model))
        loss, _ = micro_step_loss(net, mine, StepSettings("cp", mlm_weight=0.0))
        loss.backward()
        if rank == 0:
            save_file({n: p.grad.contiguous() for n, p in net.module.named_parameters() if p.grad is not None},
                      out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch + transformers: ~35 s on 2 shared cores
@pytest.mark.parametrize("split", [(4, 4), (5, 3)], ids=["even", "one-batch-ended-short"])
def test_cp_negatives_gathered_across_two_workers_equal_one_global_batch(tiny_dir, pretrain_corpus, tmp_path, split):
    """2 gloo processes with the differentiable all-gather give the gradient of CP over all 8 pairs, also
    when one rank's batch ended short (the sampler's ``pairs_skipped``): before, unequal shapes aborted gloo."""
    import torch.multiprocessing as mp

    bundle = _bundle(tiny_dir, dropout=0.0)
    big = _cp_batch(bundle, pretrain_corpus, pairs=8, mlm_probability=0.0)
    batch_file = tmp_path / "batch.json"
    batch_file.write_text(json.dumps({k: (v.tolist() if isinstance(v, torch.Tensor) else v)
                                      for k, v in big.__dict__.items()}))
    out_file = tmp_path / "grads.safetensors"
    mp.spawn(_gathered_cp_grads, args=(2, _free_port(), str(tiny_dir), str(batch_file), str(out_file), split),
             nprocs=2)
    distributed = load_file(str(out_file))

    # reference: one process, the global batch in the gathered order (firsts of both ranks, then seconds)
    net = PretrainNet(_bundle(tiny_dir, dropout=0.0).model)
    loss, _ = micro_step_loss(net, big, StepSettings("cp", mlm_weight=0.0, gather_negatives=False))
    loss.backward()
    reference = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert set(distributed) == set(reference)
    for name, grad in reference.items():
        torch.testing.assert_close(distributed[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    # and it differs from contrasting each worker's half alone (negatives really crossed workers)
    local = PretrainNet(_bundle(tiny_dir, dropout=0.0).model)
    half_loss, _ = micro_step_loss(local, _take(big, [0, 1, 2, 3]), StepSettings("cp", mlm_weight=0.0))
    assert not math.isclose(float(half_loss), float(loss), rel_tol=1e-3)


def _run_steps(net, opt, sched, sampler, pretrain_corpus, ctx, steps: range, seed: int = 7) -> list[float]:
    losses = []
    for step in steps:
        reseed_step(seed, step, 0)
        batches = [build_batch(sampler.next_batch(), pretrain_corpus, "cp", ctx, generator=step_generator(seed, step, 0, m))
                   for m in range(2)]
        losses.append(optimizer_step(net, batches, optimizer=opt, scheduler=sched, settings=StepSettings("cp")).loss)
    return losses


def test_saved_state_continues_exactly_like_the_uninterrupted_run(tiny_dir, pretrain_corpus, tmp_path):
    cfg = TrainConfig(lr=1e-3, warmup_steps=2, weight_decay=1e-5)

    def fresh():
        torch.manual_seed(0)
        bundle = _bundle(tiny_dir)
        net = PretrainNet(bundle.model)
        opt = build_optimizer(net, cfg)
        return bundle, net, opt, build_scheduler(opt, 6, cfg), CPSampler(pretrain_corpus, 4, seed=5)

    bundle, net, opt, sched, sampler = fresh()
    first = _run_steps(net, opt, sched, sampler, pretrain_corpus, TokenContext.for_bundle(bundle, 64), range(1, 4))
    ckpt = save_checkpoint(tmp_path / "ckpt", bundle.model, bundle.tokenizer, special=bundle.special, step=3)
    save_train_state(ckpt / "train", optimizer=opt, scheduler=sched, extra={"step": 3, "sampler": sampler.state_dict()})
    lr_at_3 = sched.get_last_lr()
    uninterrupted = _run_steps(net, opt, sched, sampler, pretrain_corpus, TokenContext.for_bundle(bundle, 64), range(4, 7))
    final = {n: p.detach().clone() for n, p in net.named_parameters()}

    assert {p.suffix for p in (ckpt / "train").iterdir()} == {".json", ".safetensors"}  # no pickle
    restored = load_checkpoint(ckpt, mlm_head=True)
    net2 = PretrainNet(restored.model)
    opt2 = build_optimizer(net2, cfg)
    sched2 = build_scheduler(opt2, 6, cfg)
    sampler2 = CPSampler(pretrain_corpus, 4, seed=5)
    extra = load_train_state(ckpt / "train", optimizer=opt2, scheduler=sched2)
    sampler2.load_state_dict(extra["sampler"])
    assert extra["step"] == 3 and sched2.get_last_lr() == lr_at_3
    resumed = _run_steps(net2, opt2, sched2, sampler2, pretrain_corpus, TokenContext.for_bundle(restored, 64), range(4, 7))
    assert resumed == pytest.approx(uninterrupted, rel=1e-6, abs=1e-7)
    assert resumed != pytest.approx(first, rel=1e-3)
    for name, p in net2.named_parameters():
        torch.testing.assert_close(p.detach(), final[name], atol=1e-6, rtol=1e-5, msg=name)
    assert read_train_state(ckpt / "train")["scheduler"]["last_epoch"] == 3


def test_train_state_rejects_values_json_cannot_hold(tmp_path):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters())
    with pytest.raises(TypeError, match="extra.sampler"):
        save_train_state(tmp_path, optimizer=opt, scheduler=None, extra={"sampler": object()})


def test_batches_and_steps_count_truncated_sentences(tiny_dir, pretrain_corpus):
    """build_batch counts what truncation gave up per sentence; the step sums it over micro-batches."""
    from recon.data_prep.encoding import encode
    from recon.data_prep.formats import render

    bundle = _bundle(tiny_dir, dropout=0.0)
    ctx = TokenContext.for_bundle(bundle, 12)
    sampler = CPSampler(pretrain_corpus, 6, p_blank=0.5, seed=0)
    batches, expected = [], {"truncated": 0, "entity_truncated": 0, "context_split": 0}
    for micro in range(2):
        pairs = sampler.next_batch()
        batch = build_batch(pairs, pretrain_corpus, "cp", ctx, generator=step_generator(0, 1, 0, micro))
        mine = {key: 0 for key in expected}
        for side in ("a", "b"):
            for pair in pairs:
                draw = getattr(pair, side)
                rendered = render(pretrain_corpus[draw.index].to_relation_example(), ctx.fmt, ctx.special,
                                  blank_head=draw.blank_head, blank_tail=draw.blank_tail)
                enc = encode(rendered, ctx.pieces, ctx.max_length)
                for key in mine:
                    mine[key] += int(getattr(enc, key))
        assert (batch.truncated, batch.entity_truncated, batch.context_split) == \
            (mine["truncated"], mine["entity_truncated"], mine["context_split"])
        for key in expected:
            expected[key] += mine[key]
        batches.append(batch)
    assert expected["truncated"] > 0 and expected["context_split"] + expected["entity_truncated"] > 0
    net = PretrainNet(bundle.model)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    stats = optimizer_step(net, batches, optimizer=opt, scheduler=None, settings=StepSettings("cp"))
    logged = stats.as_dict()
    assert {key: logged[key] for key in expected} == expected


# ------------------------------------------------------------------ figures kept on the device

def _reference_step(net, micro_batches, opt, settings):
    """The step as it was written before the figures moved to the device: a host read per micro-step."""
    from recon.models.nets import objectives

    net.train()
    total = sum(b.n_masked for b in micro_batches)
    n, losses = len(micro_batches), []
    for batch in micro_batches:
        positions = batch.mlm_labels != IGNORE_INDEX
        reps, logits = net(batch.input_ids, batch.attention_mask, batch.head_pos, batch.tail_pos, positions)
        obj = objectives.cp_loss(reps.float(), batch.relation_ids, temperature=settings.temperature)
        mlm = objectives.mlm_loss(logits.float(), batch.mlm_labels[positions])
        loss = obj + settings.mlm_weight * (n * batch.n_masked / total) * mlm
        (loss / n).backward()
        losses.append(float(obj.detach()) + settings.mlm_weight * float(mlm.detach()))
    torch.nn.utils.clip_grad_norm_(net.parameters(), settings.max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return sum(losses) / n


def test_device_side_figures_give_the_same_losses_and_weights_as_host_reads(tiny_dir, pretrain_corpus):
    """Pure speed: keeping the figures on the device changes no loss and no weight (same seed)."""
    settings = StepSettings("cp", gather_negatives=False)  # float32: exact equality
    runs = []
    for fn in ("reference", "optimizer_step"):
        torch.manual_seed(0)
        bundle = _bundle(tiny_dir)
        net = PretrainNet(bundle.model)
        opt = build_optimizer(net, TrainConfig(lr=1e-3, warmup_steps=0))
        sampler, ctx = CPSampler(pretrain_corpus, 4, seed=5), TokenContext.for_bundle(bundle, 64)
        losses = []
        for step in range(1, 4):
            reseed_step(7, step, 0)
            batches = [build_batch(sampler.next_batch(), pretrain_corpus, "cp", ctx, generator=step_generator(7, step, 0, m))
                       for m in range(2)]
            if fn == "reference":
                losses.append(_reference_step(net, batches, opt, settings))
            else:
                losses.append(optimizer_step(net, batches, optimizer=opt, scheduler=None, settings=settings).loss)
        runs.append((losses, {n: p.detach().clone() for n, p in net.named_parameters()}))
    (ref_losses, ref_params), (losses, params) = runs
    assert losses == ref_losses  # bit for bit
    for name, p in params.items():
        assert torch.equal(p, ref_params[name]), name


def _loop(tiny_dir, pretrain_corpus, log_every: int, steps: int = 6):
    from recon.models.pretrain.loop import run_steps

    torch.manual_seed(0)
    bundle = _bundle(tiny_dir)
    net = PretrainNet(bundle.model)
    cfg = TrainConfig(lr=1e-3, warmup_steps=1)
    opt = build_optimizer(net, cfg)
    run = PretrainConfig(objective="cp", steps=steps, batch_size=8, micro_batch_size=4, seed=7,
                         mlm_probability=0.15, log_every=log_every)  # 2 micro-batches of 4 pairs per step
    return list(run_steps(run, net, CPSampler(pretrain_corpus, 4, seed=5), pretrain_corpus, TokenContext.for_bundle(bundle, 64),
                          optimizer=opt, scheduler=build_scheduler(opt, steps, cfg), device=torch.device("cpu"),
                          gather_negatives=False, read_at=lambda s: s == 2))


def test_figures_accumulated_on_the_device_equal_the_per_step_values(tiny_dir, pretrain_corpus):
    every = _loop(tiny_dir, pretrain_corpus, log_every=1)
    sparse = _loop(tiny_dir, pretrain_corpus, log_every=4)
    assert all(stats is not None for _, stats in every)
    assert [s for s, stats in sparse if stats is not None] == [2, 4, 6]  # read_at, log_every, the last
    per_step = {s: stats for s, stats in every}
    start = 1
    for step, window in ((s, st) for s, st in sparse if st is not None):
        steps = [per_step[s] for s in range(start, step + 1)]
        assert window.steps == len(steps)
        for key in ("loss", "objective_loss", "mlm_loss", "accuracy", "grad_norm"):
            assert getattr(window, key) == pytest.approx(sum(getattr(s, key) for s in steps) / len(steps),
                                                         rel=1e-12), key
        for key in ("sentences", "tokens", "truncated", "entity_truncated", "context_split"):
            assert getattr(window, key) == sum(getattr(s, key) for s in steps), key
        assert window.lr == steps[-1].lr and window.seconds > 0 and window.cpu_seconds > 0
        start = step + 1


def test_a_non_finite_loss_is_reported_when_the_figures_are_read(tiny_dir, pretrain_corpus):
    bundle = _bundle(tiny_dir)
    net = PretrainNet(bundle.model)
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    batch = _cp_batch(bundle, pretrain_corpus, pairs=4)
    with pytest.raises(FloatingPointError, match="not finite"):
        optimizer_step(net, [batch], optimizer=torch.optim.SGD(net.parameters(), lr=0.0), scheduler=None,
                       settings=StepSettings("cp"))


def test_sync_free_cuda_paths_match_the_cpu_ones(tiny_dir, pretrain_corpus):
    """What CUDA runs instead (flat MLM indices, the masked-sum CP loss) gives the CPU path's values."""
    from recon.models.nets import objectives
    from recon.models.pretrain.batches import masked_index

    bundle = _bundle(tiny_dir, dropout=0.0)
    net = PretrainNet(bundle.model).eval()
    batch = _cp_batch(bundle, pretrain_corpus, pairs=6)
    positions = batch.mlm_labels != IGNORE_INDEX
    args = (batch.input_ids, batch.attention_mask, batch.head_pos, batch.tail_pos)
    with torch.no_grad():
        reps, by_mask = net(*args, positions)
        _, by_index = net(*args, masked_index(batch))
    assert torch.equal(by_mask, by_index)
    ids = batch.relation_ids
    for labels in (ids, torch.arange(len(ids)), torch.zeros(len(ids), dtype=torch.long)):  # none / all positive
        torch.testing.assert_close(objectives.cp_loss(reps, labels, sync=False), objectives.cp_loss(reps, labels), rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_uses_fused_adamw_and_pinned_batches(tiny_dir, pretrain_corpus):
    device = torch.device("cuda")
    bundle = _bundle(tiny_dir)
    net = PretrainNet(bundle.model).to(device)
    opt = build_optimizer(net, TrainConfig(lr=1e-3), device)
    assert opt.defaults["fused"]
    batch = _cp_batch(bundle, pretrain_corpus, pairs=4).pin_memory()
    assert batch.input_ids.is_pinned()
    stats = optimizer_step(net, [batch], optimizer=opt, scheduler=None, settings=StepSettings("cp"), device=device)
    assert math.isfinite(stats.loss)
