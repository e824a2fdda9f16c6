"""A static HTML error browser per study: every test example, its gold label and every system's predictions.

One self-contained file (``error_browser.html``, no server, no network): the data is embedded ONCE
as compact JSON (labels as small integers, one integer array per trial's predictions, sentences as
strings with the head/tail mentions delimited by control characters) and rendered client-side by
plain JavaScript, 50 rows a page, so a TACRED-sized test set (15,509 examples x 15 trials) stays a
few MB and filters in milliseconds. Filters: "A right, B wrong" for any two (model, format)
systems (default: C+M vs OnlyC of the first model), "all systems wrong / right", "systems disagree",
gold label, A's predicted label, text search; a per-relation confusion matrix of A (click a count
to filter) and the pilot analysis (agreement of C+M with the other formats).

A system is *right* on an example when more than half of its seeds predict the gold label.
"""
from __future__ import annotations

import json
import statistics
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from recon.orchestration.study.trial import PAPER_DATASET_NAMES, Trial
from recon.orchestration.report.significance import example_counts, f1_from_counts, negative_label

TEMPLATE = "error_browser.html"
FILE_NAME = "error_browser.html"
PAGE_SIZE = 50
HEAD_OPEN, HEAD_CLOSE, TAIL_OPEN, TAIL_CLOSE = "\x01", "\x02", "\x03", "\x04"


def marked_text(example) -> str:
    """The sentence with the head / tail mentions delimited (the page highlights them)."""
    opens = {example.head.start: HEAD_OPEN, example.tail.start: TAIL_OPEN}
    closes = {example.head.end: HEAD_CLOSE, example.tail.end: TAIL_CLOSE}
    words = [opens.get(i, "") + token + closes.get(i + 1, "") for i, token in enumerate(example.tokens)]
    return " ".join(words)


def _metric(rows: Sequence[dict], negative: Optional[str], metric: str = "micro_f1") -> float:
    keyed = {str(i): r for i, r in enumerate(rows)}
    return float(f1_from_counts(example_counts(keyed, list(keyed), negative, metric).sum(axis=0)))


def browser_data(study: str, trials: Iterable[Trial], predictions: Mapping[str, Mapping[str, dict]], *,
                 texts: Optional[Mapping[str, str]] = None, pilot: Optional[Sequence[dict]] = None) -> dict:
    """The page's JSON: labels, and per (dataset, setting) test set its examples and systems.

    ``predictions``: trial id -> (source -> ``{"gold", "pred"}``); ``texts``: source -> sentence
    (:func:`marked_text`) where known; ``pilot``: rows of the pilot summary (median over seeds).
    """
    groups: dict[tuple, dict[tuple, list[Trial]]] = {}
    for t in trials:
        if t.kind == "finetune" and t.trial_id in predictions:
            groups.setdefault((t.dataset, t.setting), {}).setdefault((t.model, t.format), []).append(t)
    labels: dict[str, int] = {}

    def lid(label: str) -> int:
        return labels.setdefault(label, len(labels))

    out_groups = []
    from recon.orchestration.report.tables import setting_order

    for (dataset, setting) in sorted(groups, key=lambda k: (k[0], setting_order(k[1]))):
        systems = groups[(dataset, setting)]
        members = [t for ts in systems.values() for t in ts]
        first = predictions[members[0].trial_id]
        shared = set(first)
        for t in members[1:]:
            shared &= set(predictions[t.trial_id])
        sources = [s for s in first if s in shared]
        gold = [lid(first[s]["gold"]) for s in sources]
        negative = negative_label({first[s][k] for s in sources for k in ("gold", "pred")}, members[0].metric)
        out_systems = []
        for (model, fmt), ts in systems.items():
            ts = sorted(ts, key=lambda t: t.seed)
            preds, scores = [], []
            for t in ts:
                rows = predictions[t.trial_id]
                preds.append([lid(rows[s]["pred"]) for s in sources])
                scores.append(_metric([rows[s] for s in sources], negative, members[0].metric))
            out_systems.append({"model": model, "format": fmt, "seeds": [t.seed for t in ts], "preds": preds,
                                "metric_median": statistics.median(scores), "metric_min": min(scores),
                                "metric_max": max(scores)})
        names = [(s["model"], s["format"]) for s in out_systems]
        default_a = next((i for i, n in enumerate(names) if n[1] == "C+M"), 0)
        default_b = next((i for i, n in enumerate(names) if n[0] == names[default_a][0] and n[1] == "OnlyC"),
                         1 if len(names) > 1 else 0)
        group = {"dataset": dataset, "setting": setting, "metric": members[0].metric, "negative": negative,
                 "label": f"{PAPER_DATASET_NAMES.get(dataset, dataset)} {setting} ({len(sources)} examples)",
                 "sources": sources, "gold": gold, "systems": out_systems,
                 "default_a": default_a, "default_b": default_b}
        if texts:
            group["text"] = [texts.get(s, "") for s in sources]
        out_groups.append(group)
    ordered = sorted(labels, key=labels.get)
    return {"study": study, "labels": ordered, "groups": out_groups, "pilot": list(pilot or []),
            "page_size": PAGE_SIZE}


def render(data: dict) -> str:
    """The HTML page with ``data`` embedded once (``</`` escaped so it cannot close the script)."""
    template = resources.files("recon.orchestration.report").joinpath("resources", TEMPLATE).read_text(encoding="utf-8")
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")
    import html

    return template.replace("__TITLE__", html.escape(data.get("study", ""))).replace("__DATA__", payload)


def write_error_browser(out_file: Path, study: str, trials: Iterable[Trial],
                        predictions: Mapping[str, Mapping[str, dict]], *, texts: Optional[Mapping[str, str]] = None,
                        pilot: Optional[Sequence[dict]] = None) -> Optional[Path]:
    """Write the page; None when no trial has predictions."""
    data = browser_data(study, trials, predictions, texts=texts, pilot=pilot)
    if not data["groups"]:
        return None
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(render(data), encoding="utf-8")
    return out_file


def example_texts(trials: Iterable[Trial], data_dir: Optional[str] = None) -> dict[str, str]:
    """source -> marked sentence for the test examples of the trials' datasets (best effort)."""
    from recon.orchestration.report.name_leak import TrialData

    data = TrialData(data_dir)
    out: dict[str, str] = {}
    seen = set()
    for t in trials:
        if t.kind != "finetune" or t.dataset in seen:
            continue
        seen.add(t.dataset)
        for key, ex in data.tests(t).items():
            out[key] = marked_text(ex)
    return out


def pilot_rows(out_dir: Path) -> list[dict]:
    """The pilot summary (medians over seeds) as dict rows, for the error browser."""
    import pandas as pd

    path = out_dir / "pilot_pairs.csv"
    if not path.is_file():
        return []
    frame = pd.read_csv(path)
    summary = (frame.groupby(["dataset", "setting", "model", "format_a", "format_b"], sort=False)
               [["shared_correct", "same_wrong"]].median().reset_index())
    return summary.to_dict("records")


def analysis(context) -> list[Path]:
    """Report part: the error browser, one page with every example and prediction (sentences best effort)."""
    if not context.predictions:
        return []
    try:
        texts = example_texts(context.trials, context.data_dir)
    except Exception as err:  # noqa: BLE001 - sentences are optional: the page shows sources only
        context.log(f"error browser: no sentences ({type(err).__name__}: {err})")
        texts = None
    page = write_error_browser(context.out_dir / FILE_NAME, context.spec.name, context.trials, context.predictions,
                               texts=texts, pilot=pilot_rows(context.out_dir))
    return [page] if page is not None else []

__all__ = ["analysis", "pilot_rows", "browser_data", "render", "write_error_browser", "example_texts", "marked_text", "FILE_NAME"]
