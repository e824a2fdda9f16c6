"""How sure a sweep is: every objective with its uncertainty, and which trials the dev set can tell apart.

A probe keeps its per-example predictions beside its score (``probes/step_N/seed_S.<split>.jsonl``,
written by ``trial.run_trial``), so everything here is the study room's paired bootstrap over examples
(``report.significance``: per-example counts, ``bootstrap_medians``, ``p_value``) applied to a sweep:

* **One objective** (:func:`probe_uncertainty`): the probe's ``n`` dev examples are resampled with
  replacement, every seed's metric is recomputed on the resample from its counts and the median over
  seeds taken, as the objective is. The bootstrap standard error (sd of the resampled objectives) and
  the 95% percentile interval cover dev-set sampling; the seeds' spread (min / max / sd of the per-seed
  scores) is reported beside it: with a few seeds a bootstrap over seeds would mean little.
* **The best report** (:func:`judge`): the best completed trial against every other trial, paired
  (the same resampled examples for both trials and all their seeds, one joint set of resamples per
  probe step): ``delta = best - other`` (oriented so that positive favours the best), its 95%
  interval and the two-sided p-value of the shifted bootstrap null. A trial that finished is compared
  at the last probe; a trial the scheduler stopped is compared with the best *at the step where it
  stopped* (its objective there is all it has). The p-values are Holm-adjusted over the comparisons
  with the best, because "the best beats each of them" is one family of claims; the best is chosen on
  the same examples it is tested on, so even so the report leans towards declaring a winner, never
  towards hiding one. The settings whose adjusted ``p >= alpha`` cannot be told apart from the best:
  the report prints them all (a tie set) instead of one winner.
* After the run the report also states the paired difference the dev set could detect
  (``power.paired_detectable`` of the bootstrap standard error of the differences), the measured
  counterpart of ``recon sweep plan``'s estimate.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from recon.core.storage import Storage
from recon.models.train.metrics import REPORTED_METRICS, score_from_counts
from recon.orchestration.report.significance import (ALPHA, N_BOOTSTRAP, bootstrap_medians, example_counts,
                                                     negative_label, p_value)
from recon.orchestration.sweep.power import paired_detectable
from recon.orchestration.sweep.trial import probe_predictions_rel

SCORE_TOLERANCE = 1e-6  # predictions must reproduce the stored score, else they are not what was scored


@dataclass
class ProbeScores:
    """One probe's per-example predictions for every seed, on one dev set: what the bootstrap resamples."""

    step: int
    metric: str                   # what the counts reproduce: micro_f1, accuracy or semeval_official
    negative: Optional[str]       # the negative class (None for accuracy)
    seeds: list[int]
    rows: list[dict[str, dict]]   # per seed: source -> {"gold", "pred"}

    def sources(self) -> list[str]:
        shared = set(self.rows[0]).intersection(*self.rows[1:]) if len(self.rows) > 1 else set(self.rows[0])
        return [s for s in self.rows[0] if s in shared]

    def counts(self, sources: Sequence[str]) -> np.ndarray:
        """``[seeds, n, K, 3]`` per-example counts over ``sources``."""
        return np.stack([example_counts(rows, sources, self.negative, self.metric) for rows in self.rows])


def _seed(*parts: Any) -> int:
    return zlib.crc32("\t".join(str(p) for p in parts).encode("utf-8"))


def read_jsonl(text: str) -> dict[str, dict]:
    rows = {}
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            row = json.loads(line)
            rows[str(row.get("source", i))] = row
    return rows


def load_probe_scores(storage: Storage, sweep: str, trial_id: str, step: int, rows: Sequence[dict],
                      metric_key: str, split: str) -> tuple[Optional[ProbeScores], Optional[str]]:
    """The probe's predictions for every seed (``rows``: its stored per-seed results), or None and why not."""
    metric = rows[0].get("metric") if metric_key == "score" else metric_key
    if metric not in REPORTED_METRICS:
        return None, f"objective metric {metric!r} is not a function of per-example counts"
    per_seed = []
    for row in rows:
        rel = probe_predictions_rel(sweep, trial_id, step, int(row["seed"]), split)
        if not storage.exists(rel):
            return None, "no per-example predictions (probed before they were kept)"
        per_seed.append(read_jsonl(storage.read_text(rel)))
    if metric == "accuracy":
        negative = None
    else:
        labels = {x for r in per_seed for p in r.values() for x in (p["gold"], p["pred"])}
        negative = rows[0].get("negative_label") or negative_label(labels, metric)
    scores = ProbeScores(step, metric, negative, [int(r["seed"]) for r in rows], per_seed)
    sources = scores.sources()
    if not sources:
        return None, "the seeds share no scored example"
    per_seed_score = score_from_counts(scores.counts(sources).sum(axis=1))
    for row, value in zip(rows, per_seed_score):
        if abs(float(value) - float(row["score"])) > SCORE_TOLERANCE:
            return None, (f"predictions give {value:.6f}, the stored score is {float(row['score']):.6f} "
                          f"(seed {row['seed']}): not the scored predictions")
    return scores, None


def probe_uncertainty(scores: ProbeScores, n_boot: int = N_BOOTSTRAP, alpha: float = ALPHA,
                      seed: int = 0) -> dict[str, float]:
    """Objective (median over seeds), bootstrap standard error and interval over examples, and seed spread."""
    sources = scores.sources()
    counts = scores.counts(sources)
    observed, resampled = bootstrap_medians([counts], n_boot, seed)
    lo, hi = np.percentile(resampled[:, 0], [100 * alpha / 2, 100 * (1 - alpha / 2)])
    per_seed = score_from_counts(counts.sum(axis=1))
    return {"objective": float(observed[0]), "se": float(resampled[:, 0].std(ddof=1)), "ci_lo": float(lo),
            "ci_hi": float(hi), "n_examples": float(len(sources)), "n_seeds": float(len(per_seed)),
            "seed_min": float(per_seed.min()), "seed_max": float(per_seed.max()),
            "seed_sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0}


# ---------------------------------------------------------------- the best against the rest

@dataclass
class Entry:
    """A trial as the best report sees it: its objective at its last probe, and its probes' predictions."""

    number: int
    label: str                    # "p_blank=0.3, batch_size=8"
    state: str                    # completed | stopped_early
    objective: float
    step: int                     # the probe the objective comes from
    probes: dict[int, ProbeScores] = field(default_factory=dict)
    interval: Optional[dict] = None  # probe_uncertainty of that probe
    missing: Optional[str] = None    # why the probe has no predictions


@dataclass
class Comparison:
    number: int
    state: str
    step: int
    delta: float          # best - other, oriented: > 0 favours the best
    ci_lo: float
    ci_hi: float
    p: float
    p_adjusted: float     # Holm over the comparisons with the best
    se_delta: float
    n_examples: int
    distinguishable: bool = False


@dataclass
class Verdict:
    best: int
    mode: str
    comparisons: list[Comparison]
    unjudged: dict[int, str]          # trial -> why it was not compared
    runner_up: Optional[int]
    tied: list[int]                   # the best and every trial it cannot be told apart from, best first
    better_at_step: list[int]         # stopped trials that beat the best where they were stopped
    detectable: Optional[float]       # the paired difference this dev set detects (95% / 80% power)
    alpha: float = ALPHA
    n_boot: int = N_BOOTSTRAP

    @property
    def winner(self) -> bool:
        """The best is distinguishable from every other trial it was compared with (and there was one)."""
        return bool(self.comparisons) and len(self.tied) == 1 and not self.better_at_step

    def of(self, number: int) -> Optional[Comparison]:
        return next((c for c in self.comparisons if c.number == number), None)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def judge(entries: dict[int, Entry], best: int, mode: str = "max", n_boot: int = N_BOOTSTRAP,
          alpha: float = ALPHA) -> Verdict:
    """The best trial against every other finished or stopped trial (module docstring)."""
    sign = 1.0 if mode == "max" else -1.0
    top = entries[best]
    unjudged: dict[int, str] = {}
    groups: dict[int, list[Entry]] = {}
    for e in entries.values():
        if e.number == best:
            continue
        if e.state not in ("completed", "stopped_early"):
            unjudged[e.number] = e.state
        elif e.step not in e.probes:
            unjudged[e.number] = e.missing or f"no predictions at step {e.step}"
        elif e.step not in top.probes:
            unjudged[e.number] = top.missing or f"the best trial has no predictions at step {e.step}"
        else:
            groups.setdefault(e.step, []).append(e)
    comparisons: list[Comparison] = []
    for step, others in sorted(groups.items()):
        cells = [top.probes[step], *(o.probes[step] for o in others)]
        shared = set(cells[0].sources()).intersection(*(c.sources() for c in cells[1:]))
        sources = [s for s in cells[0].sources() if s in shared]
        if not sources:
            unjudged.update({o.number: "no dev example shared with the best" for o in others})
            continue
        observed, resampled = bootstrap_medians([c.counts(sources) for c in cells], n_boot, _seed("sweep", step))
        for i, other in enumerate(others, start=1):
            delta = sign * float(observed[0] - observed[i])
            deltas = sign * (resampled[:, 0] - resampled[:, i])
            lo, hi = np.percentile(deltas, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            comparisons.append(Comparison(other.number, other.state, step, delta, float(lo), float(hi),
                                          p_value(delta, deltas), 1.0, float(deltas.std(ddof=1)), len(sources)))
    for c, adjusted in zip(comparisons, holm([c.p for c in comparisons])):
        c.p_adjusted = adjusted
        c.distinguishable = adjusted < alpha
    ranked = sorted(comparisons, key=lambda c: (c.state != "completed", c.delta))
    runner_up = ranked[0].number if ranked else None
    tied = [best] + [c.number for c in sorted(comparisons, key=lambda c: c.delta) if not c.distinguishable]
    better = [c.number for c in comparisons if c.distinguishable and c.delta < 0]
    final = [c.se_delta for c in comparisons if c.state == "completed"] or [c.se_delta for c in comparisons]
    detectable = paired_detectable(float(np.median(final)), alpha) if final else None
    return Verdict(best, mode, comparisons, unjudged, runner_up, tied, better, detectable, alpha, n_boot)


def _examples_needed(verdict: Verdict, split: str) -> str:
    """How many examples the paired test would need for the widest gap inside the tie set: the detectable
    difference shrinks as 1 / sqrt(n), so ``n x (detectable / gap)^2`` at the same pairing."""
    gaps = [abs(c.delta) for c in verdict.comparisons if not c.distinguishable]
    if not gaps or verdict.detectable is None or max(gaps) <= 0:
        return f"; more {split} examples or seeds would be needed to separate them"
    n = max(c.n_examples for c in verdict.comparisons)
    need = math.ceil(n * (verdict.detectable / max(gaps)) ** 2)
    if need <= n:
        return (f"; the widest gap among them ({max(gaps):.3f}) is near what these {n} {split} examples detect: "
                "more examples or seeds would settle it")
    return (f"; the widest gap among them ({max(gaps):.3f}) would need about {need:,} {split} examples to be "
            f"detected at this pairing (n x ({verdict.detectable:.3f} / {max(gaps):.3f})^2)")


def verdict_lines(verdict: Verdict, entries: dict[int, Entry], score: str) -> list[str]:
    """The best report in words: the runner-up, the rest, and the tie set or the winner."""
    e = entries[verdict.best]

    def at(c: Comparison) -> str:
        return f" (stopped at step {c.step}, compared there)" if c.state != "completed" else ""

    def vs(c: Comparison) -> str:
        return (f"delta {c.delta:+.3f}, 95% CI [{c.ci_lo:+.3f}, {c.ci_hi:+.3f}], p = {c.p:.3f}"
                f"{f' (Holm {c.p_adjusted:.3f})' if len(verdict.comparisons) > 1 else ''}")

    if not verdict.comparisons:
        why = "; ".join(f"trial {n}: {r}" for n, r in sorted(verdict.unjudged.items()))
        return [f"trial {e.number} was compared with no other trial ({why or 'it is the only trial'}): "
                "nothing says it is better than the alternatives"]
    n = max(c.n_examples for c in verdict.comparisons)
    lines = [f"paired bootstrap over the same {n} {score.split()[0]} examples ({verdict.n_boot} resamples, "
             f"alpha {verdict.alpha}, Holm over {len(verdict.comparisons)} comparison"
             f"{'s' if len(verdict.comparisons) > 1 else ''} with the best):"]
    if verdict.detectable is not None:
        lines.append(f"  this dev set detects paired differences of about {verdict.detectable:.3f} "
                     f"(95% two-sided, 80% power, from the bootstrap's spread of the differences)")
    runner = verdict.of(verdict.runner_up) if verdict.runner_up is not None else None
    if runner is not None:
        lines.append(f"  vs the runner-up, trial {runner.number}{at(runner)}: {vs(runner)}: "
                     f"{'distinguishable' if runner.distinguishable else 'NOT distinguishable'}")
    rest = [c for c in verdict.comparisons if c.number != verdict.runner_up]
    if rest:
        told = [c for c in rest if c.distinguishable]
        untold = [c for c in rest if not c.distinguishable]
        parts = []
        def step(c: Comparison, sep: str) -> str:
            return f"{sep}at step {c.step}" if c.state != "completed" else ""

        if told:
            parts.append("distinguishable from " + ", ".join(
                f"trial {c.number} ({c.delta:+.3f}, p = {c.p_adjusted:.3f}{step(c, ', ')})" for c in told))
        if untold:
            parts.append("NOT from " + ", ".join(
                f"trial {c.number}{' (' + step(c, '') + ')' if step(c, '') else ''}" for c in untold))
        lines.append("  vs the rest: " + "; ".join(parts))
    if verdict.unjudged:
        lines.append("  not compared: " + "; ".join(f"trial {k} ({v})" for k, v in sorted(verdict.unjudged.items())))
    for number in verdict.better_at_step:
        c = verdict.of(number)
        lines.append(f"  trial {number} was BETTER than the best at step {c.step}, where it was stopped "
                     f"({vs(c)}): the early stop, not the data, ruled it out")
    if verdict.winner:
        lines.append(f"=> trial {e.number} ({e.label}) is distinguishable from every other trial: a winner, "
                     "not noise")
    else:
        lines.append(f"=> no single winner: {len(verdict.tied)} settings cannot be told apart:")
        for number in verdict.tied:
            t = entries[number]
            ci = (f" [{t.interval['ci_lo']:.3f}, {t.interval['ci_hi']:.3f}]" if t.interval else "")
            where = f", at step {t.step} (stopped early)" if t.state != "completed" else ""
            lines.append(f"   trial {number}: {t.label}: {score} {t.objective:.3f}{ci}{where}")
        lines.append(f"   the {score.split()[0]} set cannot rank these" + _examples_needed(verdict, score.split()[0]))
    return lines




def entries_from(trials: Sequence[tuple[int, str, str]], records: dict[int, dict]) -> dict[int, Entry]:
    """``(number, label, state)`` per trial and its storage record (``tracker.trial_record``) -> entries
    for :func:`judge`; a trial that reached no probe has no objective and is left out."""
    entries = {}
    for number, label, state in trials:
        probes = (records.get(number) or {}).get("probes") or []
        if not probes:
            continue
        last = probes[-1]
        entries[number] = Entry(number, label, state, float(last["objective"]), int(last["step"]),
                                {int(p["step"]): p["per_example"] for p in probes if p.get("per_example") is not None},
                                last.get("uncertainty"), last.get("missing"))
    return entries


__all__ = ["ProbeScores", "Entry", "Comparison", "Verdict", "load_probe_scores", "probe_uncertainty", "judge",
           "holm", "verdict_lines", "entries_from", "read_jsonl"]
