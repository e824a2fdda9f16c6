"""A sweep's plots (PNG): every objective drawn with its 95% interval over dev examples, so that a ranking
the dev set cannot support does not look like one.

* ``objective_vs_<param>``: the objective against each searched parameter, error bars = the bootstrap
  interval (``confidence``), and with several seeds their min / max as ticks; the best trial a star,
  the trials it cannot be told apart from filled, those it beats grey; trials stopped early hollow
  (at their last probe).
* ``objective_intervals``: every trial ranked, with its interval (seed range as ticks) and the best's
  interval as a band: the tie set at a glance.
* ``optimization_history`` and ``param_importances`` from ``optuna.visualization.matplotlib`` (the
  importances on a one-fidelity copy of the study: every trial at its first probe).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from recon.orchestration.sweep.spec import show_value

STYLE = {"best": "tab:orange", "tied": "tab:blue", "worse": "0.55", "better": "tab:green",  # vs_best -> colour
         "not compared": "0.3", "": "tab:blue"}
LEGEND = {"best": "best", "tied": "cannot be told from the best", "worse": "distinguishably worse",
          "better": "better where stopped", "not compared": "not compared", "": "trial"}


def _errors(part):
    """Asymmetric error bars from ``ci_lo`` / ``ci_hi`` (zero where a trial has no interval)."""
    import numpy as np

    if "ci_lo" not in part or "ci_hi" not in part:
        return None
    lo = (part["objective"] - part["ci_lo"].astype(float)).to_numpy(dtype=float)
    hi = (part["ci_hi"].astype(float) - part["objective"]).to_numpy(dtype=float)
    return np.nan_to_num(np.vstack([lo, hi]), nan=0.0).clip(min=0)


def plot_objective_vs(frame, param: str, out: Path, objective_label: str) -> Path:
    """Objective against one searched parameter with 95% error bars; stopped trials hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.8, 4.4))
    data = frame[frame["objective"].notna() & frame["state"].isin(["completed", "stopped_early"])]
    groups = data["vs_best"].fillna("") if "vs_best" in data else data["state"].map(lambda s: "")
    categorical = data[param].dtype == object
    if not categorical:  # trials at the same value (a choice domain) side by side, not on top of each other
        values = data[param].astype(float)
        span = (values.max() - values.min()) or 1.0
        rank = values.groupby(values).cumcount() - (values.groupby(values).transform("size") - 1) / 2
        data = data.assign(**{param: values + 0.02 * span * rank})
    seeds_drawn = False
    for (kind, state), part in data.groupby([groups, data["state"]], sort=False):
        x = part[param].astype(str) if categorical else part[param].astype(float)
        colour = STYLE.get(kind, "tab:blue")
        hollow = state == "stopped_early"
        label = f"{LEGEND.get(kind, kind)}{' (stopped early)' if hollow else ''}".strip() or state
        ax.errorbar(x, part["objective"], yerr=_errors(part), fmt="*" if kind == "best" else "o",
                    ms=12 if kind == "best" else 7, color=colour, mfc="none" if hollow else colour,
                    ecolor=colour, elinewidth=1.2, capsize=3, alpha=0.9, label=label)
        if "seed_min" in part and part["seed_min"].notna().any():  # several seeds: their range beside the bar
            for bound in ("seed_min", "seed_max"):
                ax.scatter(x, part[bound], marker="_", s=140, color=colour, linewidths=2.2,
                           label="seed min / max" if bound == "seed_min" and not seeds_drawn else None)
            seeds_drawn = True
    ax.set_xlabel(param)
    ax.set_ylabel(objective_label)
    ax.set_title(f"objective vs {param.split('.')[-1]}: 95% CI over examples; colour: paired test vs the best",
                 fontsize=8.5, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_intervals(frame, params: list[str], out: Path, objective_label: str) -> Path:
    """Every scored trial ranked by its objective, with its 95% interval; the best's interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = frame[frame["objective"].notna()].sort_values("objective")
    fig, ax = plt.subplots(figsize=(7.2, 1.1 + 0.42 * max(len(data), 1)))
    labels = []
    for y, (_, row) in enumerate(data.iterrows()):
        kind = row.get("vs_best") if isinstance(row.get("vs_best"), str) else ""
        colour = STYLE.get(kind, "tab:blue")
        hollow = row["state"] == "stopped_early"
        err = _errors(data.loc[[row.name]])
        ax.errorbar([row["objective"]], [y], xerr=err, fmt="*" if kind == "best" else "o",
                    ms=12 if kind == "best" else 7, color=colour, mfc="none" if hollow else colour, capsize=3)
        if row.get("seed_min") == row.get("seed_min") and row.get("seed_min") is not None:  # not NaN
            ax.scatter([row["seed_min"], row["seed_max"]], [y, y], marker="|", s=160, color=colour, linewidths=2.2)
        if kind == "best" and row.get("ci_lo") == row.get("ci_lo") and row.get("ci_lo") is not None:
            ax.axvspan(float(row["ci_lo"]), float(row["ci_hi"]), color="tab:orange", alpha=0.12, lw=0)
        values = ", ".join(f"{p.split('.')[-1]}={show_value(row[p])}" for p in params if p in row)
        labels.append(f"trial {int(row['number'])}: {values}{' (stopped)' if hollow else ''}"
                      f"{f'  [{kind}]' if kind else ''}")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel(objective_label)
    seeds = " (| : seed min / max)" if "seed_min" in data and data["seed_min"].notna().any() else ""
    fig.suptitle(f"Trials ranked, 95% CI over examples{seeds}; orange band: the best's interval; [tied] / "
                 "[worse]: paired test vs the best", fontsize=8, x=0.01, ha="left")
    ax.grid(axis="x", alpha=0.3)
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


def draw_plots(study, frame, plots: Path, params: list[str], objective_label: str,
               records: dict[int, dict]) -> list[Path]:
    """Every plot of the module docstring into ``plots``; a plot that cannot be drawn leaves a ``.txt`` why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for its matplotlib backend
        from optuna.visualization import matplotlib as ovm

        early = first_probe_study(study, records)
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
    if len(frame) and frame["objective"].notna().any():
        written.append(plot_intervals(frame, params, plots / "objective_intervals.png", objective_label))
    return written


__all__ = ["draw_plots", "plot_objective_vs", "plot_intervals", "first_probe_study"]
