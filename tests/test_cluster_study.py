"""A study submitted as a Ray Job to a two-node cluster whose worker node sees nothing of the driver's disk.

The driver's folder (study file, local encoder, MLflow store, outputs) and the data directory are
empty tmpfs on the worker node; only ``cluster.shared`` (the NFS/S3 stand-in) is common. Trials and
pre-training workers need a custom resource only the worker node has. Any trial that read a
driver-local path would fail there (DatasetNotFound, a missing encoder), so a leak cannot pass.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cluster_harness import two_node_cluster, unshare_available  # noqa: E402
from tiny_bert import make_tiny_bert_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RECON_DATA_DIR") or ROOT.parent / "shared" / "datasets")
CORPUS = ROOT / "tests" / "fixtures" / "pretrain" / "corpus"
_UNSHARE = unshare_available()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_UNSHARE is not None, reason=f"two-node cluster harness: {_UNSHARE}")]

# Records every attempt of every trial in shared storage, then trains as usual: a trial trained
# twice after it had reported would leave two markers.
ATTEMPT_TRAINER = '''
import os, uuid
from pathlib import Path
from recon.orchestration.study.trainers import finetune_trial

def train(request, callbacks):
    marks = Path(os.environ["RECON_STORAGE"]) / "attempts"
    marks.mkdir(parents=True, exist_ok=True)
    (marks / f"{request.trial.trial_id}-{uuid.uuid4().hex}").write_text("started")
    return finetune_trial(request, callbacks)
'''


def _study(driver: Path, *, models: str, formats: str, seeds: str, extra: str = "") -> Path:
    encoder = make_tiny_bert_dir(driver, mlm=True)  # a directory only the driver's disk has
    text = f"""
name: cluster
encoder: {encoder}
models: {models}
pretrain:
  cp: {{objective: cp, corpus: {CORPUS}, steps: 2, batch_size: 8, micro_batch_size: 4, num_workers: 1,
       warmup: 0, lr: 1.0e-3, checkpoint_every: 2, max_length: 32, allow_leakage: true,
       worker_resources: {{recon_worker: 1}}}}
grids:
  - {{table: table5, datasets: [semeval], splits: [0.01], formats: {formats}}}
seeds: {seeds}
training: {{epochs: 1, batch_size: 16, lr: 1.0e-3, max_train_steps: 2}}
data: {{split_source: paper, max_eval: 30, max_length: 32, data_dir: {DATA}}}
ray: {{cpus_per_trial: 1, max_concurrent_trials: 1, max_retries: 3, trial_resources: {{recon_worker: 1}}}}
output_dir: {driver / 'out'}
{extra}"""
    path = driver / "study.yaml"
    path.write_text(text)
    return path


def _recon(cluster, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recon.orchestration.cli.main", *args], env=cluster.client_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _submit(cluster, *command: str, storage: Path) -> str:
    res = _recon(cluster, "submit", "--address", cluster.dashboard_url, "--storage", str(storage), "--", *command)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.splitlines()[0].split()[1].rstrip(":")


def _follow(cluster, job_id: str) -> str:
    res = _recon(cluster, "jobs", "logs", job_id, "--follow", "--address", cluster.dashboard_url)
    return res.stdout + res.stderr


def _finished_runs(spec) -> dict[str, int]:
    db = sqlite3.connect(spec.resolved_output_dir() / "mlflow.db")
    rows = db.execute("select t.value, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                      "where t.key = 'trial_id' and r.lifecycle_stage = 'active'").fetchall()
    counts: dict[str, int] = {}
    for trial_id, status in rows:
        if status == "FINISHED":
            counts[trial_id] = counts.get(trial_id, 0) + 1
    return counts


def test_submitted_study_runs_on_a_worker_that_shares_no_disk(tmp_path):
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec

    driver = tmp_path / "driver"
    driver.mkdir()
    path = _study(driver, models="[{name: Tiny}, {name: Tiny+CP, checkpoint: '@pretrain.cp'}]",
                  formats="[C+M, OnlyC]", seeds="[42]")
    spec = load_spec(path)
    trials = expand(spec)
    with two_node_cluster(tmp_path, hidden=[driver, DATA]) as cluster:
        storage = cluster.shared / "recon"
        job = _submit(cluster, "recon", "study", "run", str(path), storage=storage)
        log = _follow(cluster, job)
        assert f"job {job} SUCCEEDED" in log, log[-4000:]
        assert "4 run now, 0 failed; 4 in MLflow" in log
        for trial in trials:  # every trial ran on the worker node, never on the head
            result = json.loads((storage / "results" / trial.trial_id / "result.json").read_text())
            assert result["node"]["node_id"] == cluster.worker_node_id != cluster.head_node_id
        assert (storage / "pretrain").is_dir() and list(storage.glob("pretrain/cp-*/stage.json"))
    assert _finished_runs(spec) == {t.trial_id: 1 for t in trials}
    assert (spec.resolved_output_dir() / "summary" / "table5.md").is_file()
    # The worker read the test file from its own cache, the driver's report from the data directory:
    # the error browser still joins every prediction with its sentence, named the same on both.
    page = (spec.resolved_output_dir() / "summary" / "error_browser.html").read_text(encoding="utf-8")
    data = json.loads(page.split('id="data">', 1)[1].split("</script>", 1)[0])
    for group in data["groups"]:
        assert len(group["sources"]) == 30 and group["unjoined"] == 0
        assert all(re.fullmatch(r"semeval/test\.txt:\d+", s) for s in group["sources"]), group["sources"][:3]
        assert all("\x01" in t and "\x03" in t for t in group["text"])
    assert str(tmp_path) not in page and str(DATA) not in page


def test_worker_node_lost_mid_grid_then_a_fresh_one_finishes_it(tmp_path):
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec

    driver = tmp_path / "driver"
    driver.mkdir()
    (driver / "attempts_trainer.py").write_text(ATTEMPT_TRAINER)
    path = _study(driver, models="[{name: Tiny}]", formats="[C+M, OnlyC]", seeds="[42, 43, 44, 45]",
                  extra="trainer: attempts_trainer.py:train\n")
    spec = load_spec(path)
    trials = expand(spec)
    with two_node_cluster(tmp_path, hidden=[driver, DATA]) as cluster:
        storage = cluster.shared / "recon"
        job = _submit(cluster, "recon", "study", "run", str(path), storage=storage)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(storage.glob("results/*/result.json"))) < 2:
            time.sleep(1)
        reported = {p.parent.name for p in storage.glob("results/*/result.json")}
        assert len(reported) >= 2, "no trial reported within 5 minutes"
        cluster.kill_worker()
        cluster.start_worker()
        log = _follow(cluster, job)
        if f"job {job} SUCCEEDED" not in log:  # the grid gave up while no node could run it: resume
            job = _submit(cluster, "recon", "study", "resume", str(path), storage=storage)
            log = _follow(cluster, job)
        assert f"job {job} SUCCEEDED" in log, log[-4000:]
        attempts: dict[str, int] = {}
        for marker in (storage / "attempts").iterdir():
            tid = marker.name.split("-")[0]
            attempts[tid] = attempts.get(tid, 0) + 1
    assert _finished_runs(spec) == {t.trial_id: 1 for t in trials}
    assert all(attempts[tid] == 1 for tid in reported), (reported, attempts)  # never trained twice
    print(f"reported before the kill: {len(reported)} of {len(trials)}; attempts per trial: {attempts}")


def test_corpus_build_and_pretrain_join_the_running_cluster(tmp_path):
    """`--address` joins (no num_cpus ValueError); inputs and outputs live on the shared storage."""
    import shutil

    driver = tmp_path / "driver"
    driver.mkdir()
    encoder = make_tiny_bert_dir(driver, mlm=True)
    fixtures = ROOT / "tests" / "fixtures" / "corpus"
    with two_node_cluster(tmp_path, hidden=[driver, DATA]) as cluster:
        inputs = cluster.shared / "inputs"
        inputs.mkdir()
        for name in ("text.jsonl", "triples.tsv", "aliases.tsv"):
            shutil.copy(fixtures / name, inputs / name)
        corpus = cluster.shared / "corpus"
        built = _recon(cluster, "corpus", "build", "--address", cluster.address, "--text", str(inputs / "text.jsonl"),
                       "--triples", str(inputs / "triples.tsv"), "--aliases", str(inputs / "aliases.tsv"),
                       "--out", str(corpus), "--shards", "2")
        assert built.returncode == 0, built.stdout + built.stderr
        assert (corpus / "manifest.json").is_file()
        trained = _recon(cluster, "pretrain", "--address", cluster.address, "--objective", "cp", "--corpus",
                         str(corpus), "--out", str(cluster.shared / "pretrain"), "--workers", "1", "--steps", "2",
                         "--batch-size", "4", "--micro-batch-size", "4", "--warmup", "0", "--max-length", "32",
                         "--encoder", str(encoder), "--allow-leakage", "--worker-resources", '{"recon_worker": 1}',
                         "--tracking-uri", f"sqlite:///{driver / 'mlflow.db'}")
        assert trained.returncode == 0, trained.stdout + trained.stderr
        assert "final checkpoint:" in trained.stdout
        assert (cluster.shared / "pretrain" / "pretrain-cp" / "final.json").is_file()


def _corpus_digests(corpus: Path) -> tuple[list, dict]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    return [(s["id"], s["examples"], s["digest"]) for s in manifest["shards"]], manifest["counts"]


def _kg_tables(tables: Path) -> dict[str, list]:
    from recon.data_prep.corpus.kg_tables import read_table

    return {name: sorted(map(repr, read_table(str(tables), name))) for name in ("statements", "aliases", "sitelinks")}


def test_kg_tables_and_join_linked_corpus_on_the_cluster_match_one_node(tmp_path):
    """The Wikidata dump slice (5 bad lines, skipped and counted) -> KG tables -> a join-linked corpus of the
    WikiExtractor articles, built on the shared-nothing cluster, equals the same two builds on one node."""
    import shutil

    kg_fixtures = ROOT / "tests" / "fixtures" / "kg"
    driver = tmp_path / "driver"
    driver.mkdir()

    def build(run, where: Path) -> None:
        shutil.copy(kg_fixtures / "wikidata_slice.json", where / "slice.json")
        shutil.copy(kg_fixtures / "wiki_articles.jsonl", where / "articles.jsonl")
        tables = run("kg", "build", "--wikidata-dump", str(where / "slice.json"), "--out", str(where / "tables"),
                     "--on-error", "skip", "--chunk-lines", "60", "--rows-per-part", "120")
        assert tables.returncode == 0, tables.stdout + tables.stderr
        corpus = run("corpus", "build", "--kg", str(where / "tables"), "--text", str(where / "articles.jsonl"),
                     "--out", str(where / "corpus"), "--linking", "join", "--sentences-per-partition", "3",
                     "--shards", "2")
        assert corpus.returncode == 0, corpus.stdout + corpus.stderr

    with two_node_cluster(tmp_path, hidden=[driver, DATA]) as cluster:
        build(lambda *args: _recon(cluster, *args[:2], "--address", cluster.address, *args[2:]), cluster.shared)
        on_cluster = tmp_path / "from_cluster"
        shutil.copytree(cluster.shared, on_cluster)

    alone = driver / "alone"
    alone.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    build(lambda *args: subprocess.run([sys.executable, "-m", "recon.orchestration.cli.main", *args, "--num-cpus", "2"],
                                       env=env, capture_output=True, text=True, timeout=600, cwd=ROOT), alone)

    manifests = {name: json.loads((root / "tables" / "manifest.json").read_text()) for name, root in
                 (("cluster", on_cluster), ("alone", alone))}
    assert manifests["cluster"]["counts"] == manifests["alone"]["counts"]
    assert manifests["cluster"]["errors"]["count"] == manifests["alone"]["errors"]["count"] == 5
    assert manifests["cluster"]["tables"] == manifests["alone"]["tables"]
    assert _kg_tables(on_cluster / "tables") == _kg_tables(alone / "tables")
    shards, counts = _corpus_digests(on_cluster / "corpus")
    assert (shards, counts) == _corpus_digests(alone / "corpus")
    assert sum(n for _, n, _ in shards) > 0 and counts["anchors_unlinked"] == 1


def test_study_without_shared_storage_is_refused_before_any_trial(tmp_path):
    """A driver joining the cluster with the default storage (its own output folder, which the worker node does
    not see) is refused naming the storage and the node; with --storage on the shared folder the same study runs.
    """
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec

    driver = tmp_path / "driver"
    driver.mkdir()
    path = _study(driver, models="[{name: Tiny}]", formats="[C+M]", seeds="[42]")
    spec = load_spec(path)
    with two_node_cluster(tmp_path, hidden=[driver, DATA]) as cluster:
        res = _recon(cluster, "study", "run", str(path), "--address", cluster.address)
        assert res.returncode == 2, res.stdout + res.stderr
        err = res.stderr
        assert "study cluster did not start" in err and "nothing was run or written" in err
        assert f"the storage location {spec.resolved_output_dir()} is not the same place on node" in err
        assert cluster.worker_node_id[:12] in err and cluster.head_node_id[:12] not in err
        assert not (spec.resolved_output_dir() / "mlflow.db").exists()
        assert not (spec.resolved_output_dir() / "results").exists()

        storage = cluster.shared / "recon"
        res = _recon(cluster, "study", "run", str(path), "--address", cluster.address, "--storage", str(storage))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "1 run now, 0 failed; 1 in MLflow" in res.stdout
        (trial,) = expand(spec)
        result = json.loads((storage / "results" / trial.trial_id / "result.json").read_text())
        assert result["node"]["node_id"] == cluster.worker_node_id
