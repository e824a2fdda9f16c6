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
import warnings
from pathlib import Path
from typing import Any, Optional

from recon.orchestration.pretrain.run import PROGRESS_DIR
from recon.core.storage import Storage
from recon.orchestration.sweep.trial import RESULT_FILE, TRIAL_FILE, PRETRAIN_RUN, probe_rel, trial_rel
from recon.orchestration.tracking.client import PARENT_TAG, ROLE, flatten, git_commit, log_artifacts_redacted, metric_key, search_all_runs
from recon.core.privacy import redact
from recon.orchestration.tracking.uri import is_remote, prepare_local_store

SWEEP_ROLE, TRIAL_ROLE = "sweep", "sweep-trial"


def trial_record(storage: Storage, sweep: str, trial_id: str, probe_steps: list[int], seeds: list[int]) -> dict:
    """What storage holds of one trial: its config, the probes that finished, the pre-training curve."""
    import statistics

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
        record["probes"].append({"step": step, "objective": statistics.median(r["score"] for r in rows),
                                 "scores": {str(r["seed"]): r["score"] for r in rows},
                                 "node": rows[-1].get("node")})
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
        label = ", ".join(f"{p.split('.')[-1]}={_fmt(v)}" for p, v in params.items())
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
        if record["probes"]:
            metrics.append(Metric("objective", float(record["probes"][-1]["objective"]), now, 0))
            metrics.append(Metric("probes_done", float(len(record["probes"])), now, 0))
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
        from mlflow.entities import Metric

        run_id = self.parent_run_id()
        if best:
            now = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric("best_objective", float(best["value"]), now, 0),
                                                   Metric("best_trial", float(best["number"]), now, 0)])
        log_artifacts_redacted(self.client, run_id, Path(artifacts))  # a secret in a config never leaves
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- artifacts

def trials_frame(study, states: dict[int, str], records: dict[int, dict]):
    """One row per Optuna trial: number, state, sampled values, objective at each probed step (pandas)."""
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
        curve = curve_summary_of(record)
        if curve.get("pretrain_loss_last") is not None:
            row["pretrain_loss_last"] = curve["pretrain_loss_last"]
        rows.append(row)
    return pd.DataFrame(rows)


def curve_summary_of(record: dict) -> dict:
    from recon.orchestration.sweep.trial import curve_summary

    return curve_summary(record.get("curve") or [])


def plot_objective_vs(frame, param: str, out: Path, objective_label: str) -> Path:
    """Objective against one searched parameter; trials stopped early are hollow, at their last probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for state, style in (("completed", {"c": "tab:blue"}), ("stopped_early", {"facecolors": "none",
                                                                              "edgecolors": "tab:red"})):
        part = frame[(frame["state"] == state) & frame["objective"].notna()]
        if len(part):
            ax.scatter(part[param].astype(float) if part[param].dtype != object else part[param].astype(str),
                       part["objective"], s=45, label=state.replace("_", " "), **style)
    ax.set_xlabel(param)
    ax.set_ylabel(objective_label)
    ax.set_title(f"objective vs {param.split('.')[-1]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def first_probe_study(study, records: dict[int, dict]):
    """An in-memory copy of the study in which every trial that reached the first probe is COMPLETE with
    its first-probe score: one fidelity for all, so trials stopped early count in the importances."""
    import optuna

    view = optuna.create_study(direction=study.direction)
    for t in study.get_trials(deepcopy=False):
        probes = (records.get(t.number) or {}).get("probes") or []
        if probes and t.distributions:
            view.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                     value=float(probes[0]["objective"])))
    return view


def write_artifacts(study, frame, out_dir: Path, params: list[str], objective_label: str,
                    best_yaml: Optional[str], records: Optional[dict[int, dict]] = None) -> list[Path]:
    """trials.csv / trials.md, best_config.yaml and the plots (PNG) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    frame.to_csv(out_dir / "trials.csv", index=False)
    (out_dir / "trials.md").write_text(frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    written += [out_dir / "trials.csv", out_dir / "trials.md"]
    if best_yaml:
        (out_dir / "best_config.yaml").write_text(best_yaml)
        written.append(out_dir / "best_config.yaml")
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for its matplotlib backend
        from optuna.visualization import matplotlib as ovm

        early = first_probe_study(study, records or {})
        for name, draw, source in (("optimization_history", ovm.plot_optimization_history, study),
                                   ("param_importances", ovm.plot_param_importances, early)):
            try:
                if name == "param_importances" and len(early.trials) < 3:
                    raise ValueError(f"{len(early.trials)} trial(s) reached the first probe; importances need 3+")
                ax = draw(source)
                fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
                if getattr(fig, "_suptitle", None) is not None:
                    fig._suptitle.set_text("")
                for loc in ("left", "center"):
                    ax.set_title("", loc=loc)
                ax.set_title("Importances: first-probe score, all trials" if name == "param_importances"
                             else "Optimisation history (completed trials)", loc="left")
                fig.set_size_inches(6.5, 4)
                fig.tight_layout()
                fig.savefig(plots / f"{name}.png", dpi=110)
                plt.close(fig)
                written.append(plots / f"{name}.png")
            except Exception as exc:  # noqa: BLE001 - e.g. importances need 2+ completed trials
                (plots / f"{name}.txt").write_text(f"not drawn: {exc}\n")
    for param in params:
        if param in frame:
            written.append(plot_objective_vs(frame, param, plots / f"objective_vs_{param.split('.')[-1]}.png",
                                             objective_label))
    return written


__all__ = ["SweepTracker", "trial_record", "trials_frame", "write_artifacts", "plot_objective_vs",
           "SWEEP_ROLE", "TRIAL_ROLE"]
