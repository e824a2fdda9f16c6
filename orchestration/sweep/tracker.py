"""MLflow for a sweep (the driver is the only writer) and its artifacts: trials table, best config, plots.

* One experiment per sweep (named after it), one parent run (``recon.role=sweep``) whose params are
  the space, sampler and budget, and one nested run per trial (``recon.role=sweep-trial``,
  ``mlflow.parentRunId``): params = the sampled values (``space.<path>``) and the resolved configs
  (``pretrain.*``, ``probe.*``); metrics = the objective at each probed step (``probe_objective``,
  step = pre-training step), the per-seed scores, the pre-training curve (``pretrain/<name>`` per
  step) and its summary, and the final ``objective``; tags = state (completed / stopped_early /
  failed), Optuna number, trial hash and node.
* A trial is logged from its records in storage (``trial.json``, probe files, progress files), so a
  stopped trial is logged as far as it got, and logging is idempotent by (trial hash, Optuna number).
* Parent artifacts: ``trials.csv`` / ``trials.md``, ``best_config.yaml`` and PNG plots (optimisation
  history and parameter importances from ``optuna.visualization.matplotlib``; objective vs each
  searched parameter, stopped trials marked).
"""
from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any, Optional

from recon.orchestration.pretrain.run import PROGRESS_DIR
from recon.core.storage import Storage
from recon.orchestration.sweep.trial import RESULT_FILE, TRIAL_FILE, PRETRAIN_RUN, probe_rel, trial_rel
from recon.orchestration.tracking.client import PARENT_TAG, ROLE, flatten, git_commit, log_artifacts_redacted, metric_key, search_all_runs
from recon.core.privacy import redact
from recon.orchestration.tracking.uri import is_remote, prepare_local_store
from recon.orchestration.sweep.spec import show_value

SWEEP_ROLE, TRIAL_ROLE = "sweep", "sweep-trial"


def trial_record(storage: Storage, sweep: str, trial_id: str, probe_steps: list[int], seeds: list[int],
                 metric: str = "score", split: str = "dev") -> dict:
    """What storage holds of one trial: its config, the probes that finished (each with its per-example
    predictions and the objective's uncertainty, ``confidence``), the pre-training curve."""
    import statistics

    from recon.orchestration.sweep.confidence import load_probe_scores, probe_uncertainty

    record: dict[str, Any] = {"trial_id": trial_id, "probes": [], "curve": []}
    if storage.exists(trial_rel(sweep, trial_id, TRIAL_FILE)):
        record.update(storage.read_json(trial_rel(sweep, trial_id, TRIAL_FILE)))
    if storage.exists(trial_rel(sweep, trial_id, RESULT_FILE)):
        record["result"] = storage.read_json(trial_rel(sweep, trial_id, RESULT_FILE))
    for step in probe_steps:
        rows = [storage.read_json(probe_rel(sweep, trial_id, step, s)) for s in seeds
                if storage.exists(probe_rel(sweep, trial_id, step, s))]
        if len(rows) != len(seeds):
            break
        scores, missing = load_probe_scores(storage, sweep, trial_id, step, rows, metric, split)
        interval = (probe_uncertainty(scores, seed=zlib.crc32(f"{trial_id}:{step}".encode()))
                    if scores is not None else None)
        record["probes"].append({"step": step, "objective": statistics.median(r["score"] for r in rows),
                                 "scores": {str(r["seed"]): r["score"] for r in rows},
                                 "node": rows[-1].get("node"), "per_example": scores, "missing": missing,
                                 "uncertainty": interval})
    run = Storage.from_uri(storage.join(trial_rel(sweep, trial_id, PRETRAIN_RUN)))
    if run.exists(PROGRESS_DIR):
        by_step: dict[int, dict] = {}
        for rel in sorted(f for f in run.list(PROGRESS_DIR) if f.endswith(".json")):
            row = run.read_json(rel)
            by_step[int(row["step"])] = row
        record["curve"] = [by_step[s] for s in sorted(by_step)]
    return record


class SweepTracker:
    """The sweep driver's handle on its MLflow experiment."""

    def __init__(self, tracking_uri: str, name: str, artifact_root: Optional[Path] = None, create: bool = True):
        from mlflow.tracking import MlflowClient

        prepare_local_store(tracking_uri)
        self.tracking_uri, self.name = tracking_uri, name
        self.client = MlflowClient(tracking_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None and create:
            location = artifact_root.resolve().as_uri() if artifact_root and not is_remote(tracking_uri) else None
            experiment = self.client.get_experiment(self.client.create_experiment(name, artifact_location=location))
        self.experiment = experiment
        self._commit = git_commit()

    def _search(self, filter_string: str) -> list:
        return search_all_runs(self.client, self.experiment, filter_string)

    def parent_run_id(self, params: Optional[dict] = None) -> str:
        from mlflow.entities import Param

        runs = self._search(f"tags.`{ROLE}` = '{SWEEP_ROLE}'")
        if runs:
            run_id = runs[0].info.run_id
            if runs[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment.experiment_id, run_name=f"{self.name} (sweep)",
                                     tags={ROLE: SWEEP_ROLE, "git_commit": self._commit})
        items = [Param(k, redact(v)[:6000]) for k, v in flatten(params or {}).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i:i + 100])
        return run.info.run_id

    def trial_runs(self) -> dict[str, Any]:
        """``<optuna number>`` -> finished trial run."""
        return {r.data.tags.get("optuna_number"): r for r in self._search(f"tags.`{ROLE}` = '{TRIAL_ROLE}'")
                if r.info.status in ("FINISHED", "KILLED", "FAILED")}

    def log_trial(self, number: int, params: dict, state: str, record: dict) -> Optional[str]:
        """One nested run per Optuna trial; an already finished one is left alone (returns None)."""
        from mlflow.entities import Metric, Param

        for run in self._search(f"tags.`{ROLE}` = '{TRIAL_ROLE}' and tags.optuna_number = '{number}'"):
            if run.info.status in ("FINISHED", "KILLED", "FAILED"):
                return None
            self.client.delete_run(run.info.run_id)  # half-logged by a killed driver: log it again
        parent = self.parent_run_id()
        node = (record.get("result") or {}).get("node") or (record["probes"][-1].get("node") if record["probes"]
                                                             else None) or {}
        tags = {ROLE: TRIAL_ROLE, PARENT_TAG: parent, "optuna_number": str(number), "trial_hash": record["trial_id"],
                "state": state, "git_commit": self._commit, "node_id": str(node.get("node_id")),
                "cached": str(bool((record.get("result") or {}).get("cached")))}
        label = ", ".join(f"{p.split('.')[-1]}={show_value(v)}" for p, v in params.items())
        run_id = self.client.create_run(self.experiment.experiment_id, run_name=redact(f"trial {number}: {label}"),
                                        tags={k: redact(v) for k, v in tags.items()}).info.run_id
        flat = {f"space.{k}": str(v) for k, v in params.items()}
        flat.update(flatten({"pretrain": record.get("pretrain") or {}, "probe": record.get("probe") or {}}))
        items = [Param(k, redact(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])
        now = int(time.time() * 1000)
        metrics = []
        for probe in record["probes"]:
            metrics.append(Metric("probe_objective", float(probe["objective"]), now, int(probe["step"])))
            metrics += [Metric(metric_key("probe", f"seed_{s}"), float(v), now, int(probe["step"]))
                        for s, v in probe["scores"].items()]
            metrics += [Metric(f"probe_objective_{k}", float(v), now, int(probe["step"]))
                        for k, v in (probe.get("uncertainty") or {}).items() if k in ("se", "ci_lo", "ci_hi")]
        if record["probes"]:
            metrics.append(Metric("objective", float(record["probes"][-1]["objective"]), now, 0))
            metrics.append(Metric("probes_done", float(len(record["probes"])), now, 0))
            metrics += [Metric(f"objective_{k}", float(v), now, 0)
                        for k, v in uncertainty_metrics(record["probes"][-1].get("uncertainty")).items()]
        for row in record["curve"]:
            metrics += [Metric(metric_key("pretrain", k), float(v), now, int(row["step"])) for k, v in row.items()
                        if k not in ("step", "resumed_from") and isinstance(v, (int, float))]
        from recon.orchestration.sweep.trial import curve_summary

        metrics += [Metric(k, float(v), now, 0) for k, v in curve_summary(record["curve"]).items()]
        if record.get("result", {}).get("seconds") is not None:
            metrics.append(Metric("seconds", float(record["result"]["seconds"]), now, 0))
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        self.client.set_terminated(run_id, {"completed": "FINISHED", "stopped_early": "KILLED"}.get(state, "FAILED"))
        return run_id

    def finish(self, artifacts: Path, best: Optional[dict]) -> str:
        """The best trial, and how sure the sweep is of it, on the parent run; each trial run gets its
        comparison with the best (``delta_vs_best``, Holm-adjusted ``p_vs_best_holm``, tag ``vs_best``)."""
        from mlflow.entities import Metric

        run_id = self.parent_run_id()
        if best:
            now = int(time.time() * 1000)
            metrics = [Metric("best_objective", float(best["value"]), now, 0),
                       Metric("best_trial", float(best["number"]), now, 0)]
            metrics += [Metric(f"best_objective_{k}", float(v), now, 0)
                        for k, v in (best.get("interval") or {}).items() if k in ("se", "ci_lo", "ci_hi")]
            verdict = best.get("verdict")
            if verdict is not None:
                metrics += [Metric("best_is_winner", float(verdict.winner), now, 0),
                            Metric("settings_tied_with_best", float(len(verdict.tied)), now, 0)]
                if verdict.detectable is not None:
                    metrics.append(Metric("detectable_difference", float(verdict.detectable), now, 0))
                self._log_comparisons(verdict, now)
            self.client.log_batch(run_id, metrics=metrics)
        log_artifacts_redacted(self.client, run_id, Path(artifacts))  # a secret in a config never leaves
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


    def _log_comparisons(self, verdict, now: int) -> None:
        from mlflow.entities import Metric

        runs = self.trial_runs()
        for number, run in runs.items():
            c = verdict.of(int(number)) if str(number).isdigit() else None
            label = vs_best_label(verdict, int(number)) if str(number).isdigit() else ""
            if label:
                self.client.set_tag(run.info.run_id, "vs_best", label)
            if c is not None:
                self.client.log_batch(run.info.run_id, metrics=[
                    Metric("delta_vs_best", c.delta, now, c.step), Metric("p_vs_best_holm", c.p_adjusted, now, c.step),
                    Metric("distinguishable_from_best", float(c.distinguishable), now, c.step)])


def uncertainty_metrics(interval: Optional[dict]) -> dict[str, float]:
    """The objective's uncertainty as MLflow metrics: ``se``, ``ci_lo``, ``ci_hi``, ``n_examples`` and,
    with several seeds, their spread."""
    if not interval:
        return {}
    keys = ["se", "ci_lo", "ci_hi", "n_examples"] + (["seed_min", "seed_max", "seed_sd"]
                                                      if interval.get("n_seeds", 1) > 1 else [])
    return {k: float(interval[k]) for k in keys}


def vs_best_label(verdict, number: int) -> str:
    """``best`` / ``tied`` (cannot be told apart from the best) / ``worse`` / ``better`` (at its stopping step)."""
    if verdict is None:
        return ""
    if number == verdict.best:
        return "best"
    c = verdict.of(number)
    if c is None:
        return "not compared"
    if not c.distinguishable:
        return "tied"
    return "better" if c.delta < 0 else "worse"




# ---------------------------------------------------------------- artifacts

def trials_frame(study, states: dict[int, str], records: dict[int, dict], verdict=None):
    """One row per Optuna trial: number, state, sampled values, objective at each probed step, and the
    objective's uncertainty (bootstrap standard error and 95% interval over the probe's examples, the
    seeds' spread with several seeds) and its comparison with the best trial (``confidence``)."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        record = records.get(t.number) or {}
        probes = record.get("probes") or []
        row = {"number": t.number, "state": states.get(t.number) or t.state.name.lower(),
               "trial_hash": record.get("trial_id", t.user_attrs.get("trial_hash", "")), **t.params}
        for probe in probes:
            row[f"step_{probe['step']}"] = probe["objective"]
        row["objective"] = probes[-1]["objective"] if probes else t.value
        interval = (probes[-1].get("uncertainty") if probes else None) or {}
        row.update(objective_se=interval.get("se"), ci_lo=interval.get("ci_lo"), ci_hi=interval.get("ci_hi"),
                   n_examples=interval.get("n_examples"))
        if interval.get("n_seeds", 1) > 1:
            row.update(seed_min=interval["seed_min"], seed_max=interval["seed_max"])
        if verdict is not None:
            c = verdict.of(t.number)
            row.update(vs_best=vs_best_label(verdict, t.number), delta_vs_best=c.delta if c else None,
                       p_vs_best_holm=c.p_adjusted if c else None)
        curve = curve_summary_of(record)
        if curve.get("pretrain_loss_last") is not None:
            row["pretrain_loss_last"] = curve["pretrain_loss_last"]
        rows.append(row)
    return pd.DataFrame(rows)


def curve_summary_of(record: dict) -> dict:
    from recon.orchestration.sweep.trial import curve_summary

    return curve_summary(record.get("curve") or [])


def write_artifacts(study, frame, out_dir: Path, params: list[str], objective_label: str,
                    best_yaml: Optional[str], records: Optional[dict[int, dict]] = None) -> list[Path]:
    """trials.csv / trials.md, best_config.yaml and the plots (PNG, ``sweep.plots``) in ``out_dir``."""
    from recon.orchestration.sweep.plots import draw_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    frame.to_csv(out_dir / "trials.csv", index=False)
    (out_dir / "trials.md").write_text(frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    written += [out_dir / "trials.csv", out_dir / "trials.md"]
    if best_yaml:
        (out_dir / "best_config.yaml").write_text(best_yaml)
        written.append(out_dir / "best_config.yaml")
    return written + draw_plots(study, frame, out_dir / "plots", params, objective_label, records or {})


__all__ = ["SweepTracker", "trial_record", "trials_frame", "write_artifacts", "uncertainty_metrics", "vs_best_label",
           "SWEEP_ROLE", "TRIAL_ROLE"]
