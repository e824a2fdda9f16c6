"""One identity per example (``semeval/test.txt:12``), wherever its file was read, and the joins built on it.

The trials read their data from a node's cache (``<cache>/data/<digest>/semeval/test.txt``), the
report reads the driver's data directory, and a recon before this identity wrote the absolute path a
trial read into ``predictions.jsonl``. Every analysis that joins predictions with examples must find
the same example from any of them, and count (log and show) what it cannot join.
"""
import json
import os
from pathlib import Path

import pytest

from recon.data_prep.example import Entity, ExampleIndex, RelationExample, portable_source, split_source

DATA = Path(os.environ.get("RECON_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
OLD_CACHE = "/home/someone/.cache/recon/storage/data/c738ba97973f1036"  # what an older recon wrote
N = 30


@pytest.mark.parametrize("source, expected", [
    ("/home/u/.cache/recon/storage/data/3f2a/semeval/test.txt:12", "semeval/test.txt:12"),
    ("/work/shared/datasets/semeval/test.txt:12", "semeval/test.txt:12"),
    ("../shared/datasets/semeval/test.txt:12", "semeval/test.txt:12"),
    ("semeval/test.txt:12", "semeval/test.txt:12"),
    ("test.txt:12", "test.txt:12"),                       # a custom trainer's bare file name: kept
    ("17", "17"), ("", ""),
    ("/data/tacred/test.json#4021", "tacred/test.json#4021"),
    ("/data/fewrel/val_wiki.json#P31[5]", "fewrel/val_wiki.json#P31[5]"),
    ("/data/nyt/val.json#/people/person/place_lived[3]", "nyt/val.json#/people/person/place_lived[3]"),
    ("C:\\data\\semeval\\test.txt:4", "semeval/test.txt:4"),
    ("/abs/semeval/train_0.1.txt", "semeval/train_0.1.txt"),  # a file's identity, no line
])
def test_portable_source_keeps_the_folder_file_and_place(source, expected):
    assert portable_source(source) == expected
    assert portable_source(expected) == expected  # idempotent: a portable source maps to itself


def test_split_source_reads_lines_and_records():
    assert split_source("/a/b.txt:7") == ("/a/b.txt", ":7")
    assert split_source("/a/b.json#P1[2]") == ("/a/b.json", "#P1[2]")
    assert split_source("/a/b.txt") == ("/a/b.txt", "")


def _ex(source, label="r"):
    return RelationExample(("a", "b"), Entity(0, 1), Entity(1, 2), label, source=source)


def test_index_joins_any_form_of_a_source_and_refuses_another_gold_label():
    first, second = _ex("/x/semeval/test.txt:1", "A"), _ex("/x/semeval/test.txt:2", "B")
    index = ExampleIndex([first, second, _ex("/x/semeval/dev.txt:1")])
    assert first.id == "semeval/test.txt:1" and len(index) == 3
    for source in ("semeval/test.txt:1", f"{OLD_CACHE}/semeval/test.txt:1", "/y/semeval/test.txt:1", "test.txt:1"):
        assert index.get(source) is first, source
    assert index.get("semeval/test.txt:1", "A") is first and index.get("semeval/test.txt:1", "B") is None
    assert index.get("semeval/test.txt:3") is None and index.get("other/test.txt:1") is None
    # a bare name two indexed files share is ambiguous: no guess
    both = ExampleIndex([first, _ex("/x/wiki80/test.txt:1")])
    assert both.get("test.txt:1") is None and both.get("wiki80/test.txt:1") is not None


def test_the_driver_and_a_node_cache_give_the_same_identities(tmp_path):
    """The report loads semeval from the data directory, a trial from its node's cache: same ids."""
    from recon.core.storage import Storage
    from recon.data_prep.registry import load_dataset
    from recon.orchestration.study.data import materialize, publish_study_data

    manifest = publish_study_data(["semeval"], str(DATA), Storage.from_uri(str(tmp_path / "store")))
    node = materialize(manifest, tmp_path / "node-cache")
    assert "/data/" in node and Path(node, "semeval", "test.txt").is_file()
    driver = load_dataset("semeval", data_dir=str(DATA)).splits["test"]
    cached = load_dataset("semeval", data_dir=node).splits["test"]
    assert cached[0].source.startswith(node) and driver[0].source.startswith(str(DATA))
    assert [e.id for e in cached] == [e.id for e in driver]
    assert driver[0].id == "semeval/test.txt:1" and driver[-1].id == f"semeval/test.txt:{len(driver)}"


# ------------------------------------------------------------------ the report's joins on old and new stores

STUDY = f"""
name: joins
models: [{{name: Tiny}}]
grids:
  - {{table: table5, datasets: [semeval], splits: [0.01], formats: [C+M, OnlyC]}}
seeds: [42]
data: {{data_dir: {DATA}}}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from recon.orchestration.study.plan import expand
    from recon.orchestration.study.spec import load_spec

    root = tmp_path_factory.mktemp("joins")
    (root / "study.yaml").write_text(STUDY + f"output_dir: {root / 'out'}\n")
    spec = load_spec(root / "study.yaml")
    lines = (DATA / "semeval" / "test.txt").read_text(encoding="utf-8").splitlines()
    gold = {i: json.loads(lines[i - 1])["relation"] for i in range(1, N + 1)}
    return spec, expand(spec), gold


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _predictions(tmp_path, trials, gold, extra=()):
    """C+M as an older recon wrote it (absolute node-cache paths), OnlyC as this one does (portable ids)."""
    from recon.orchestration.report.significance import load_predictions

    paths = {}
    for trial in trials:
        old = trial.format == "C+M"
        rows = [{"source": f"{OLD_CACHE}/semeval/test.txt:{i}" if old else f"semeval/test.txt:{i}",
                 "gold": g, "pred": g if i % (3 if old else 4) else "Other"} for i, g in gold.items()]
        paths[trial.trial_id] = _write(tmp_path / f"{trial.format}.jsonl", rows + list(extra))
    return load_predictions(trials, lambda t: paths[t.trial_id]), paths


def test_old_and_new_predictions_join_the_same_examples_in_every_analysis(study, tmp_path):
    from recon.orchestration.report.error_browser import example_texts, write_error_browser
    from recon.orchestration.report.name_leak import name_leak_analysis
    from recon.orchestration.report.pilot import pilot_analysis
    from recon.orchestration.report.significance import significance_frame

    spec, trials, gold = study
    predictions, paths = _predictions(tmp_path, trials, gold)
    expected = [f"semeval/test.txt:{i}" for i in range(1, N + 1)]
    assert all(list(rows) == expected for rows in predictions.values())
    assert all(r["source"] == s for rows in predictions.values() for s, r in rows.items())
    logged = []
    texts, failed = example_texts(trials, predictions, str(DATA))
    assert failed == {} and sorted(texts) == sorted(expected)
    assert all("\x01" in t and "\x02" in t and "\x03" in t and "\x04" in t for t in texts.values())
    page = write_error_browser(tmp_path / "browser.html", "joins", trials, predictions, texts=texts, log=logged.append)
    data = json.loads(page.read_text().split('id="data">', 1)[1].split("</script>", 1)[0])
    assert data["groups"][0]["sources"] == expected and data["groups"][0]["unjoined"] == 0
    assert OLD_CACHE not in page.read_text() and str(DATA) not in page.read_text()
    assert name_leak_analysis(trials, predictions, tmp_path / "leak", data_dir=str(DATA), log=logged.append)
    assert not logged
    sig = significance_frame(trials, predictions, n_boot=50)
    assert list(sig["n_examples"]) == [N] and list(sig["n_unjoined"]) == [0]
    pilot = pilot_analysis(trials, lambda t: paths[t.trial_id], tmp_path / "pilot", log=logged.append)
    assert pilot and not logged
    samples = [json.loads(line) for line in (tmp_path / "pilot" / "pilot_examples.jsonl").read_text().splitlines()]
    assert samples and all(s["source"] in expected for s in samples)


def test_what_cannot_be_joined_is_counted_in_the_console_and_the_page(study, tmp_path):
    from recon.orchestration.report.error_browser import example_texts, write_error_browser
    from recon.orchestration.report.name_leak import name_leak_analysis
    from recon.orchestration.report.significance import significance_frame, unjoined_note

    spec, trials, gold = study
    # one source no test file has, and one whose gold label is not the file's (the file changed since)
    wrong = "Other" if gold[1] != "Other" else "Cause-Effect(e1,e2)"
    extra = [{"source": "semeval/test.txt:999999", "gold": "Other", "pred": "Other"}]
    predictions, paths = _predictions(tmp_path, trials, gold, extra)
    cm = next(t for t in trials if t.format == "C+M").trial_id
    predictions[cm]["semeval/test.txt:1"] = {**predictions[cm]["semeval/test.txt:1"], "gold": wrong}
    logged = []
    texts, _ = example_texts(trials, predictions, str(DATA))
    page = write_error_browser(tmp_path / "browser.html", "joins", trials, predictions, texts=texts, log=logged.append)
    group = json.loads(page.read_text().split('id="data">', 1)[1].split("</script>", 1)[0])["groups"][0]
    assert group["unjoined"] == 2 and group["unjoined_sample"] == ["semeval/test.txt:1", "semeval/test.txt:999999"]
    assert group["text"][0] == "" and all(group["text"][1:N])
    assert logged == [f"error browser: 2 of {N + 1} examples of SemEval 1% could not be joined (no sentence: "
                      f"{group['unjoined_why']}); e.g. semeval/test.txt:1, semeval/test.txt:999999"]
    logged.clear()
    name_leak_analysis(trials, predictions, tmp_path / "leak", data_dir=str(DATA), log=logged.append)
    assert len(logged) == 1 and logged[0].startswith(f"name leak: 3 of {2 * (N + 1)} semeval predictions could not "
                                                     "be joined")
    assert logged[0] in (tmp_path / "leak" / "name_leak.md").read_text()
    del predictions[cm]["semeval/test.txt:2"]  # one example the OnlyC trial has and C+M lacks
    sig = significance_frame(trials, predictions, n_boot=50)
    assert list(sig["n_examples"]) == [N] and list(sig["n_unjoined"]) == [1]
    assert unjoined_note(sig).startswith(f"significance: 1 of {N + 1} examples of the compared cells could not be")
