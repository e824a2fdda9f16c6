"""A static HTML error browser per study: every test example, its gold label and every system's predictions.

One self-contained file (``error_browser.html``, no server, no network): the data is embedded ONCE
as compact JSON (labels as small integers, one integer array per trial's predictions, sentences as
strings with the head/tail mentions delimited by control characters) and rendered client-side by
plain JavaScript, 50 rows a page, so a TACRED-sized test set (15,509 examples x 15 trials) stays a
few MB and filters in milliseconds. Filters: "A right, B wrong" for any two (model, format)
systems (default: C+M vs OnlyC of the first model), "all systems wrong / right", "systems disagree",
gold label, A's predicted label, text search, and "A flips under a test view" (a name swap or OnlyC, where the
study scored views: the swapped sentence is shown beside the original, with A's prediction on it); a
per-relation confusion matrix of A (click a count to filter) and the pilot analysis (agreement of C+M with the
other formats).

A system is *right* on an example when more than half of its seeds predict the gold label, and *flips* under a
view when more than half of its seeds predict on the view another label than on the original.

Examples are named by their portable identity (``semeval/test.txt:12``; ``recon.orchestration.report.joins``),
never by a directory of the machine that ran a trial, and their sentences are found through the same
identity (``TrialData.test_example``). An example whose sentence cannot be found is counted: the
page shows the count above the rows and the report's console logs it.
"""
from __future__ import annotations

import json
import statistics
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

from recon.orchestration.study.trial import PAPER_DATASET_NAMES, Trial
from recon.orchestration.report.joins import unjoined_message
from recon.orchestration.report.name_leak import NOT_LOADED, TrialData
from recon.orchestration.report.significance import example_counts, f1_from_counts, negative_label

TEMPLATE = "error_browser.html"
FILE_NAME = "error_browser.html"
PAGE_SIZE = 50
HEAD_OPEN, HEAD_CLOSE, TAIL_OPEN, TAIL_CLOSE = "\x01", "\x02", "\x03", "\x04"


def marked_text(example) -> str:
    """The sentence with the head / tail mentions delimited (the page highlights them)."""
    return marked_tokens(example.tokens, (example.head.start, example.head.end), (example.tail.start, example.tail.end))


def marked_tokens(tokens: Sequence[str], head: Sequence[int], tail: Sequence[int]) -> str:
    """:func:`marked_text` of tokens and ``[start, end)`` spans: a view's swapped sentence (``view_predictions``)."""
    opens = {head[0]: HEAD_OPEN, tail[0]: TAIL_OPEN}
    closes = {head[1]: HEAD_CLOSE, tail[1]: TAIL_CLOSE}
    return " ".join(opens.get(i, "") + token + closes.get(i + 1, "") for i, token in enumerate(tokens))


def _metric(rows: Sequence[dict], negative: Optional[str], metric: str = "micro_f1") -> float:
    keyed = {str(i): r for i, r in enumerate(rows)}
    return float(f1_from_counts(example_counts(keyed, list(keyed), negative, metric).sum(axis=0)))


def browser_data(study: str, trials: Iterable[Trial], predictions: Mapping[str, Mapping[str, dict]], *,
                 texts: Optional[Mapping[str, str]] = None, pilot: Optional[Sequence[dict]] = None,
                 why_no_text: Optional[Mapping[str, str]] = None,
                 views: Optional[Mapping[str, Mapping[str, Mapping[str, dict]]]] = None) -> dict:
    """The page's JSON: labels, and per (dataset, setting) test set its examples and systems.

    ``views``: trial id -> test view -> (source -> ``view_predictions.jsonl`` row;
    ``recon.orchestration.report.name_reliance``). A system whose every seed has a view gets its predictions on
    it (``view_preds[view]``, one list per seed); the group lists its ``views`` and, per view, the swapped
    sentence of every example the view changed (``view_text``), so the page can show the examples whose
    prediction flips under a swap with both sentences.

    ``predictions``: trial id -> (source -> ``{"gold", "pred"}``); ``texts``: source -> sentence
    (:func:`marked_text`) where known; ``pilot``: rows of the pilot summary (median over seeds);
    ``why_no_text``: dataset -> why none of its sentences could be read. A group's ``unjoined`` counts
    its examples without a sentence (all of them when no ``texts`` are given), ``unjoined_why`` says why.
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
        view_text: dict[str, list[str]] = {}
        for (model, fmt), ts in systems.items():
            ts = sorted(ts, key=lambda t: t.seed)
            preds, scores = [], []
            for t in ts:
                rows = predictions[t.trial_id]
                preds.append([lid(rows[s]["pred"]) for s in sources])
                scores.append(_metric([rows[s] for s in sources], negative, members[0].metric))
            system = {"model": model, "format": fmt, "seeds": [t.seed for t in ts], "preds": preds,
                      "metric_median": statistics.median(scores), "metric_min": min(scores),
                      "metric_max": max(scores)}
            on_views = [(views or {}).get(t.trial_id) or {} for t in ts]
            for view in sorted(set.intersection(*(set(v) for v in on_views))):
                per_seed = [v[view] for v in on_views]
                if not all(s in rows for rows in per_seed for s in sources):
                    continue  # a seed without this example on the view: the system shows no flips for it
                system.setdefault("view_preds", {})[view] = [[lid(rows[s]["pred"]) for s in sources]
                                                            for rows in per_seed]
                if view not in view_text:
                    first = per_seed[0]
                    view_text[view] = [marked_tokens(first[s]["tokens"], first[s]["head"], first[s]["tail"])
                                       if first[s].get("tokens") else "" for s in sources]
            out_systems.append(system)
        names = [(s["model"], s["format"]) for s in out_systems]
        default_a = next((i for i, n in enumerate(names) if n[1] == "C+M"), 0)
        default_b = next((i for i, n in enumerate(names) if n[0] == names[default_a][0] and n[1] == "OnlyC"),
                         1 if len(names) > 1 else 0)
        group = {"dataset": dataset, "setting": setting, "metric": members[0].metric, "negative": negative,
                 "label": f"{PAPER_DATASET_NAMES.get(dataset, dataset)} {setting} ({len(sources)} examples)",
                 "sources": sources, "gold": gold, "systems": out_systems,
                 "default_a": default_a, "default_b": default_b, "views": sorted(view_text), "view_text": view_text}
        if texts is not None:
            group["text"] = [texts.get(s, "") for s in sources]
        missing = [s for s in sources if texts is None or s not in texts]
        group["unjoined"] = len(missing)
        if missing:
            group["unjoined_sample"] = missing[:3]
            group["unjoined_why"] = (why_no_text or {}).get(dataset) or (
                NOT_LOADED if texts is not None else "no sentences were given")
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
                        pilot: Optional[Sequence[dict]] = None, why_no_text: Optional[Mapping[str, str]] = None,
                        log: Optional[Callable[[str], None]] = None,
                        views: Optional[Mapping[str, Mapping[str, Mapping[str, dict]]]] = None) -> Optional[Path]:
    """Write the page; None when no trial has predictions. ``log`` gets one line per test set whose
    examples are not all joined with their sentence (the same count the page shows)."""
    data = browser_data(study, trials, predictions, texts=texts, pilot=pilot, why_no_text=why_no_text, views=views)
    if not data["groups"]:
        return None
    for group in data["groups"]:
        if group["unjoined"] and log is not None:
            log(unjoined_message("error browser", group["unjoined"], len(group["sources"]),
                                 f"examples of {group['label'].rsplit(' (', 1)[0]}", f"no sentence: {group['unjoined_why']}",
                                 group["unjoined_sample"]))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(render(data), encoding="utf-8")
    return out_file


def example_texts(trials: Iterable[Trial], predictions: Mapping[str, Mapping[str, dict]],
                  data_dir: Optional[str] = None) -> tuple[dict[str, str], dict[str, Exception]]:
    """Prediction source -> marked sentence, for every prediction whose test example is found with the
    gold label of every trial's prediction, and dataset -> the error that kept its test examples from
    loading here (then none of its sentences are shown)."""
    data = TrialData(data_dir)
    texts: dict[str, str] = {}
    mismatched: set[str] = set()  # a trial's gold label differs from the file's: its sentence would mislead
    failed: dict[str, Exception] = {}
    for t in trials:
        if t.kind != "finetune" or t.trial_id not in predictions or t.dataset in failed:
            continue
        try:
            index = data.tests(t)
        except Exception as err:  # noqa: BLE001 - no sentences for this dataset: the page and the log say why
            failed[t.dataset] = err
            continue
        for source, row in predictions[t.trial_id].items():
            if source in mismatched:
                continue
            example = index.get(source)
            if example is not None and example.label == row.get("gold", example.label):
                texts.setdefault(source, marked_text(example))
            elif example is not None:
                mismatched.add(source)
                texts.pop(source, None)
    return texts, failed


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
    """Report part: the error browser, one page with every example, its sentence and every prediction."""
    if not context.predictions:
        return []
    texts, failed = example_texts(context.trials, context.predictions, context.data_dir)
    for dataset, err in failed.items():  # the full error (it may name this machine's folders) in the console only
        context.log(f"error browser: no {dataset} sentences: {type(err).__name__}: {err}")
    why = {dataset: f"its test examples could not be loaded where the report was written ({type(err).__name__})"
           for dataset, err in failed.items()}
    page = write_error_browser(context.out_dir / FILE_NAME, context.spec.name, context.trials, context.predictions,
                               texts=texts, pilot=pilot_rows(context.out_dir), why_no_text=why, log=context.log,
                               views=context.shared.get("views"))
    return [page] if page is not None else []

__all__ = ["analysis", "pilot_rows", "browser_data", "render", "write_error_browser", "example_texts", "marked_text", "marked_tokens", "FILE_NAME"]
