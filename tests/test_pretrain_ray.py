"""Pre-training on Ray Train: config rules, run-directory bookkeeping, the CLI, and (slow) real
2-worker gloo runs on a tiny BERT and real FewRel sentences that lose a worker or the whole job."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from recon.core.errors import ReconError
from recon.orchestration.cli.main import build_parser, main
from recon.core.storage import Storage
from recon.orchestration.cli.commands.pretrain import config_from_args, format_curve
from recon.orchestration.pretrain.run import CONFIG_FILE, PretrainRun
from recon.models.pretrain.config import PretrainConfig
from recon.orchestration.tracking.uri import absolute_tracking_uri
from recon.orchestration.pretrain.checkpoints import latest_checkpoint
from recon.orchestration.pretrain.progress import read_progress
from recon.orchestration.pretrain.driver import run_pretraining
from tiny_bert import make_tiny_bert_dir

CORPUS = Path(__file__).parent / "fixtures" / "pretrain" / "corpus"


def test_batch_must_split_into_workers_micro_batches_and_accumulation():
    cfg = PretrainConfig(batch_size=2048, num_workers=2, micro_batch_size=32)
    assert cfg.accum_steps == 32  # 2 x 32 x 32 = 2048 pairs = 4096 sentences per step
    assert PretrainConfig(batch_size=8, num_workers=2).micro_batch_size == 4
    with pytest.raises(ReconError, match="not a multiple of workers x micro-batch"):
        PretrainConfig(batch_size=100, num_workers=2, micro_batch_size=32)
    with pytest.raises(ReconError, match="objective"):
        PretrainConfig(objective="mlm")
    with pytest.raises(ReconError, match="batchsize: unknown field of PretrainConfig"):
        PretrainConfig.from_dict({"objective": "cp", "batchsize": 4})


def test_cli_maps_flags_to_the_config_with_paper_batch_defaults():
    args = build_parser().parse_args(
        ["pretrain", "--objective", "mtb", "--corpus", "c", "--workers", "2", "--micro-batch-size", "16",
         "--p-blank", "0.3", "--checkpoint-every", "7", "--max-failures", "1", "--resume"])
    cfg = config_from_args(args)
    assert (cfg.objective, cfg.batch_size, cfg.micro_batch_size, cfg.accum_steps) == ("mtb", 256, 16, 8)
    assert (cfg.p_blank, cfg.checkpoint_every, cfg.max_failures, cfg.resume) == (0.3, 7, 1, True)
    assert (cfg.lr, cfg.warmup, cfg.max_length, cfg.temperature, cfg.weight_decay) == (3e-5, 500, 64, 0.05, 1e-5)
    cp = config_from_args(build_parser().parse_args(["pretrain", "--objective", "cp", "--corpus", "c"]))
    assert cp.batch_size == 2048


def test_relative_sqlite_uri_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_tracking_uri("http://host:5000") == "http://host:5000"


def _fake_checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    d = run_dir / f"checkpoint_step_{step:06d}"
    (d / "train").mkdir(parents=True)
    for name in ("recon.json", "model.safetensors", "train/optimizer.safetensors"):
        (d / name).write_text("x")
    if complete:
        (d / "train" / "train_state.json").write_text("{}")
    return d


def test_latest_checkpoint_is_the_highest_complete_step(tmp_path):
    assert latest_checkpoint(Storage.from_uri(str(tmp_path)), "missing") is None
    _fake_checkpoint(tmp_path, 4)
    best = _fake_checkpoint(tmp_path, 12)
    _fake_checkpoint(tmp_path, 16, complete=False)  # a copy interrupted mid-way
    (tmp_path / "checkpoint_step_banana").mkdir()
    assert latest_checkpoint(Storage.from_uri(str(tmp_path))) == best.name
    assert latest_checkpoint(Storage.from_uri(str(tmp_path.parent)), tmp_path.name) == f"{tmp_path.name}/{best.name}"


def test_a_used_run_directory_needs_resume_and_resume_needs_the_same_settings(tmp_path):
    cfg = PretrainRun(corpus=str(CORPUS), evaluate_on=[], out=str(tmp_path), batch_size=8, steps=4)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict()))
    _fake_checkpoint(cfg.run_dir, 2)
    with pytest.raises(ReconError, match="pass --resume"):
        run_pretraining(cfg)
    changed = PretrainRun(corpus=str(CORPUS), evaluate_on=[], out=str(tmp_path), batch_size=16, steps=4, resume=True)
    with pytest.raises(ReconError, match="batch_size: 8 -> 16"):
        run_pretraining(changed)
    # A changed step count would rebuild the LR schedule with a new total (the rate would jump).
    longer = PretrainRun(corpus=str(CORPUS), evaluate_on=[], out=str(tmp_path), batch_size=8, steps=8, resume=True)
    with pytest.raises(ReconError, match="steps: 4 -> 8"):
        run_pretraining(longer)
    nothing = PretrainRun(corpus=str(CORPUS), evaluate_on=[], out=str(tmp_path / "other"), batch_size=8, resume=True)
    with pytest.raises(ReconError, match="nothing to resume"):
        run_pretraining(nothing)


def test_a_corpus_that_keeps_evaluated_entity_pairs_is_refused_before_training(tmp_path):
    """The fixture corpus records no exclusions: pre-training for a SemEval evaluation must refuse it."""
    from recon.data_prep.corpus import LeakageError

    cfg = PretrainRun(corpus=str(CORPUS), evaluate_on=["semeval"], out=str(tmp_path), batch_size=8, steps=4,
                      tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(LeakageError, match="semeval") as err:
        run_pretraining(cfg)
    assert "allow_leakage" in str(err.value) and "--exclude" in str(err.value)
    assert not cfg.run_dir.exists()  # refused before anything was written


def test_missing_corpus_is_reported_before_any_worker_starts(tmp_path):
    with pytest.raises(ReconError, match="manifest.json is missing"):
        run_pretraining(PretrainRun(corpus=str(tmp_path), out=str(tmp_path / "out"), batch_size=8))


def test_loss_curve_table_lists_every_nth_step_and_the_last():
    rows = [{"step": s, "loss": 9.0 - s, "cp_loss": 4.0, "mlm_loss": 5.0 - s, "contrastive_accuracy": 0.5,
             "sentences_per_s": 100.0, "lr": 1e-5} for s in range(1, 8)]
    lines = format_curve(rows, "cp", every=3).splitlines()
    assert [int(line.split()[0]) for line in lines[1:]] == [3, 6, 7]
    assert float(lines[-1].split()[1]) == 2.0


# ------------------------------------------------------------------------------------------- slow

def _tiny_cfg(tmp_path: Path, **kw) -> PretrainRun:
    enc = make_tiny_bert_dir(tmp_path, mlm=True)
    # The fixture corpus records no exclusions: these runs evaluate on nothing, so no leakage check applies.
    base = dict(objective="cp", corpus=str(CORPUS), evaluate_on=[], num_workers=2, steps=6, batch_size=16, micro_batch_size=4,
                encoder=str(enc), lr=1e-3, warmup=0, checkpoint_every=2, out=str(tmp_path / "out"),
                tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", fail_marker=str(tmp_path / "failed-once"),
                heldout_fraction=0.4, heldout_batches=2)  # the fixture has 64 sentences: hold out enough for pairs
    base.update(kw)
    return PretrainRun(**base)


def _attempts(run_dir: Path) -> list[list[dict]]:
    """progress.jsonl split into attempts: a new one starts where the restore step changes or the
    step does not increase."""
    rows = [json.loads(line) for line in (Path(run_dir) / "progress.jsonl").read_text().splitlines()]
    attempts: list[list[dict]] = [[]]
    for row in rows:
        last = attempts[-1][-1] if attempts[-1] else None
        if last and (row["step"] <= last["step"] or row["resumed_from"] != last["resumed_from"]):
            attempts.append([])
        attempts[-1].append(row)
    return attempts


def _mlflow_summary(cfg: PretrainConfig) -> tuple[str, list[int], list[str], dict]:
    from mlflow.tracking import MlflowClient

    run_id = json.loads((cfg.run_dir / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(cfg.tracking_uri)
    run = client.get_run(run_id)
    steps = sorted({m.step for m in client.get_metric_history(run_id, "loss")})
    artifacts = [a.path for a in client.list_artifacts(run_id, "encoder")]
    return run.info.status, steps, artifacts, run.data.params


@pytest.mark.slow
def test_a_worker_killed_mid_run_restarts_from_its_checkpoint_at_the_right_step(tmp_path):
    """Rank 1 dies (os._exit) at the start of step 5; checkpoints exist for steps 2 and 4."""
    from recon.models.nets.loading import load_encoder

    cfg = _tiny_cfg(tmp_path, fail_at_step=5, max_failures=1)
    result = run_pretraining(cfg)
    final = result.local
    assert Path(cfg.fail_marker).exists()  # the failure did happen
    first, second = _attempts(cfg.run_dir)
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    assert [r["step"] for r in second] == [5, 6] and {r["resumed_from"] for r in second} == {4}
    rows = read_progress(cfg.run_uri)
    assert [r["step"] for r in rows] == list(range(1, cfg.steps + 1))
    assert all(r["loss"] > 0 for r in rows)

    bundle = load_encoder(str(final), mlm_head=None)  # as saved: the pre-training head comes back
    assert json.loads((final / "recon.json").read_text())["step"] == cfg.steps
    assert not (final / "train").exists() and bundle.model.has_mlm_head

    status, steps, artifacts, params = _mlflow_summary(cfg)
    assert status == "FINISHED" and steps == list(range(1, cfg.steps + 1))
    assert "encoder/model.safetensors" in artifacts
    assert params["objective"] == "cp" and params["accum_steps"] == "2"

    # held-out accuracy at every checkpoint and at the end, in the step files, MLflow and final.json
    scored = [r for r in rows if "heldout_contrastive_accuracy" in r]
    assert [r["step"] for r in scored] == [2, 4, 6]
    assert all(0 <= r["heldout_contrastive_accuracy"] <= 1 and 0 < r["heldout_chance_accuracy"] < 1
               and r["heldout_items"] > 0 for r in scored)
    from mlflow.tracking import MlflowClient

    from recon.orchestration.pretrain.driver import final_encoder

    run_id = json.loads((cfg.run_dir / "mlflow_run.json").read_text())["run_id"]
    history = MlflowClient(cfg.tracking_uri).get_metric_history(run_id, "heldout_contrastive_accuracy")
    assert sorted(m.step for m in history) == [2, 4, 6]
    summary = json.loads((cfg.run_dir / "final.json").read_text())["heldout"]
    assert summary["step"] == 6 and summary["heldout_contrastive_accuracy"] == scored[-1]["heldout_contrastive_accuracy"]
    assert 0 <= summary["initial_heldout_contrastive_accuracy"] <= 1  # the untrained encoder, before step 1
    assert final_encoder(cfg.run_uri).heldout == summary

    # the final encoder is the run's MLflow model, with the last step's figures (held-out accuracy included)
    client = MlflowClient(cfg.tracking_uri)
    model = client.get_logged_model(result.model_id)
    assert model.name == "pretrain-cp-encoder" and model.source_run_id == run_id
    assert model.tags["recon.encoder_digest"] == result.digest and model.tags["recon.objective"] == "cp"
    figures = {m.key: m for m in model.metrics}
    assert figures["heldout_contrastive_accuracy"].value == scored[-1]["heldout_contrastive_accuracy"]
    assert {m.step for m in figures.values()} == {cfg.steps}
    assert client.get_run(run_id).data.tags["recon.model_id"] == result.model_id


@pytest.mark.slow
def test_a_failed_job_resumed_from_the_cli_repeats_the_same_batches(tmp_path, capsys):
    """No restarts allowed: the job fails at step 4; `recon pretrain --resume` continues from step 3
    (checkpoint_every=3) and its redone steps have exactly the first attempt's losses."""
    cfg = _tiny_cfg(tmp_path, objective="mtb", fail_at_step=5, max_failures=0, checkpoint_every=3,
                    run_name="mtb-run")
    with pytest.raises(ReconError, match="pre-training failed"):
        run_pretraining(cfg)
    assert latest_checkpoint(Storage.from_uri(cfg.run_uri)).endswith("checkpoint_step_000003")
    argv = ["pretrain", "--objective", "mtb", "--corpus", cfg.corpus, "--workers", "2", "--steps", "6",
            "--batch-size", "16", "--micro-batch-size", "4", "--encoder", cfg.encoder, "--lr", "1e-3",
            "--warmup", "0", "--checkpoint-every", "3", "--max-failures", "0", "--out", cfg.out,
            "--run-name", "mtb-run", "--tracking-uri", cfg.tracking_uri, "--resume", "--allow-leakage",
            "--heldout-fraction", "0.4", "--heldout-batches", "2"]
    # the CLI has no --fail-* flags: they are test hooks, so the resumed config differs only there
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "final checkpoint:" in out and "mtb_loss" in out
    first, second = _attempts(cfg.run_dir)
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    assert [r["step"] for r in second] == [4, 5, 6] and {r["resumed_from"] for r in second} == {3}
    assert second[0]["loss"] == pytest.approx(first[3]["loss"], rel=1e-6)  # same step 4 batch and masks
    status, steps, _, _ = _mlflow_summary(cfg)
    assert status == "FINISHED" and steps == [1, 2, 3, 4, 5, 6]
