"""The static error browser: its data, generation time at TACRED size, and the page in headless Chromium.

The browser tests drive Debian's chromium + chromium-driver through Selenium (no browser download);
they are skipped where either is missing. The screenshot of the demo study's page is written under
the pytest tmp dir and copied to ``$RECON_SCREENSHOT_DIR`` when that is set.
"""
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from headless_browser import chromium_driver

from recon.orchestration.report.error_browser import browser_data, marked_text, render, write_error_browser
from recon.orchestration.study.trial import Trial
from recon.orchestration.report.significance import load_predictions

from test_significance import demo  # noqa: F401 - the session fixture: the demo-shaped toy study



def _trial(model, fmt, seed, dataset="tacred", setting="100%"):
    return Trial(f"{model}-{fmt}-{seed}", "finetune", ("table1",), dataset, setting, fmt, model, seed, {})


def _synthetic(n=15_509, models=("BERT", "MTB", "CP"), formats=("C+M",), seeds=(42, 43, 44, 45, 46), seed=0):
    """TACRED-sized predictions: 42 labels, no_relation most frequent, 15 trials by default."""
    rng = np.random.default_rng(seed)
    labels = ["no_relation"] + [f"per:rel_{i}" for i in range(41)]
    golds = rng.choice(labels, n, p=[0.79] + [0.21 / 41] * 41)
    trials, preds = [], {}
    for m in models:
        for f in formats:
            for s in seeds:
                t = _trial(m, f, s)
                right = rng.random(n) < 0.7
                pred = np.where(right, golds, rng.choice(labels, n))
                preds[t.trial_id] = {f"test.json#{i}": {"gold": g, "pred": p} for i, (g, p) in enumerate(zip(golds, pred))}
                trials.append(t)
    texts = {f"test.json#{i}": "\x01Bill Gates\x02 founded \x03Microsoft\x04 in 1975 with Paul Allen in Albuquerque ."
             for i in range(n)}
    return trials, preds, texts


def _driver():
    return chromium_driver("1500,1100")


def _matching(driver) -> int:
    return int(driver.find_element("id", "count").get_attribute("data-matching"))


def _select(driver, element_id, value):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(str(value))


def test_data_is_compact_and_majority_of_seeds_decides():
    trials = [_trial("BERT", "C+M", s) for s in (1, 2, 3)] + [_trial("BERT", "OnlyC", 1)]
    rows = {"a": ("x", ["x", "x", "y"], "y"), "b": ("y", ["x", "y", "x"], "y"), "c": ("Other", ["Other"] * 3, "x")}
    preds = {t.trial_id: {} for t in trials}
    for source, (gold, cm, onlyc) in rows.items():
        for t, p in zip(trials[:3], cm):
            preds[t.trial_id][source] = {"gold": gold, "pred": p}
        preds[trials[3].trial_id][source] = {"gold": gold, "pred": onlyc}
    data = browser_data("s", trials, preds)
    group = data["groups"][0]
    assert group["sources"] == ["a", "b", "c"] and [data["labels"][g] for g in group["gold"]] == ["x", "y", "Other"]
    cm = group["systems"][0]
    assert (cm["model"], cm["format"], cm["seeds"]) == ("BERT", "C+M", [1, 2, 3]) and len(cm["preds"]) == 3
    assert group["default_a"] == 0 and group["default_b"] == 1 and group["negative"] == "Other"
    page = render({**data, "study": "</script><b>x"})
    assert page.count("</script>") == 2 and "<\\/script>" in page  # data embedded once, cannot close the tag


def test_marked_text_delimits_the_mentions():
    from recon.data_prep.example import Entity, RelationExample

    ex = RelationExample(("a", "b", "c", "d"), Entity(0, 1), Entity(2, 4), "r")
    assert marked_text(ex) == "\x01a\x02 b \x03c d\x04"


def test_generation_is_fast_at_tacred_size(tmp_path):
    trials, preds, texts = _synthetic()
    start = time.perf_counter()
    path = write_error_browser(tmp_path / "big.html", "synthetic", trials, preds, texts=texts)
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    print(f"\nerror browser, 15,509 examples x 15 trials: {seconds:.2f} s, {size / 1e6:.1f} MB")
    assert seconds < 20 and size < 12e6
    payload = path.read_text().split('id="data">', 1)[1].split("</script>", 1)[0]
    data = json.loads(payload)
    assert len(data["groups"][0]["gold"]) == 15_509 and sum(len(s["preds"]) for s in data["groups"][0]["systems"]) == 15


@pytest.mark.slow
def test_tacred_sized_page_filters_in_chromium(tmp_path):
    trials, preds, texts = _synthetic()
    path = write_error_browser(tmp_path / "big.html", "synthetic", trials, preds, texts=texts)
    driver = _driver()
    try:
        start = time.perf_counter()
        driver.get(path.as_uri())
        assert driver.find_element("tag name", "body").get_attribute("data-ready") == "1"
        loaded = time.perf_counter() - start
        assert _matching(driver) == 15_509
        assert len(driver.find_elements("css selector", "#rows-body tr")) == 50  # paginated
        start = time.perf_counter()
        _select(driver, "filter", "all_wrong")
        filtered = time.perf_counter() - start
        expected = 0
        for i in range(15_509):
            source = f"test.json#{i}"
            wrong = all(sum(preds[t.trial_id][source]["pred"] == preds[t.trial_id][source]["gold"]
                            for t in trials if t.model == m) * 2 <= 5 for m in ("BERT", "MTB", "CP"))
            expected += wrong
        assert _matching(driver) == expected
        print(f"\nchromium: page loaded in {loaded:.2f} s, 'all wrong' filter applied in {filtered:.2f} s")
        assert loaded < 30 and filtered < 5
    finally:
        driver.quit()


@pytest.mark.slow
def test_page_says_how_many_examples_have_no_sentence(tmp_path):
    trials = [_trial("BERT", "C+M", 1, dataset="semeval", setting="1%")]
    preds = {trials[0].trial_id: {f"semeval/test.txt:{i}": {"gold": "x", "pred": "x"} for i in (1, 2, 3)}}
    texts = {"semeval/test.txt:1": "\x01a\x02 b \x03c\x04", "semeval/test.txt:3": "\x01d\x02 e \x03f\x04"}
    logged = []
    page = write_error_browser(tmp_path / "p.html", "s", trials, preds, texts=texts, log=logged.append)
    assert len(logged) == 1 and logged[0].startswith("error browser: 1 of 3 examples of SemEval 1% could not be joined")
    driver = _driver()
    try:
        driver.get(page.as_uri())
        banner = driver.find_element("id", "unjoined").text
        assert banner.startswith("1 of 3 examples of this test set have no sentence: ") and "semeval/test.txt:2" in banner
        cells = [tr.find_elements("css selector", "td")[2] for tr in driver.find_elements("css selector", "#rows-body tr")]
        assert [bool(c.find_elements("css selector", "span.h")) for c in cells] == [True, False, True]
        driver.save_screenshot(str(tmp_path / "unjoined.png"))
        keep = os.environ.get("RECON_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "unjoined.png", Path(keep) / "error_browser_unjoined.png")
    finally:
        driver.quit()


@pytest.mark.slow
def test_flip_filter_shows_both_sentences_in_chromium(tmp_path):
    """"A flips under the view": the examples on which most of A's seeds change their prediction on a name swap,
    each with its original and its swapped sentence and A's prediction on the view."""
    trials = [_trial("BERT", "C+M", s, dataset="semeval", setting="10%") for s in (1, 2, 3)]
    sources = [f"semeval/test.txt:{i}" for i in range(6)]
    preds = {t.trial_id: {s: {"gold": "A(e1,e2)", "pred": "A(e1,e2)"} for s in sources} for t in trials}
    texts = {s: f"\x01Ann{i}\x02 met \x03Bob\x04" for i, s in enumerate(sources)}
    flips_per_seed = {0: 3, 1: 2, 2: 1, 3: 0}  # example 0 flips for 3 seeds, 1 for 2 (a majority), 2 for one
    views = {}
    for j, t in enumerate(trials):
        rows = {}
        for i, s in enumerate(sources):
            flipped = j < flips_per_seed.get(i, 0)
            rows[s] = {"source": s, "gold": "A(e1,e2)", "pred": "Other" if flipped else "A(e1,e2)", "changed": i < 4,
                       **({"tokens": ["Zed", "met", "Kay"], "head": [0, 1], "tail": [2, 3]} if i < 4 else {})}
        views[t.trial_id] = {"swap-type": rows}
    page = write_error_browser(tmp_path / "flips.html", "s", trials, preds, texts=texts, views=views)
    driver = _driver()
    try:
        driver.get(page.as_uri())
        assert _matching(driver) == 6
        _select(driver, "view", "swap-type")
        _select(driver, "filter", "a_flips")
        assert _matching(driver) == 2
        rows = driver.find_elements("css selector", "#rows-body tr")
        assert [r.get_attribute("data-source") for r in rows] == sources[:2]
        cells = rows[0].find_elements("css selector", "td")
        assert cells[2].text == "Ann0 met Bob" and cells[-2].text == "Zed met Kay"  # the original, then the swap
        assert cells[-1].text == "Other 3/3 flip" and rows[1].find_elements("css selector", "td")[-1].text == "Other 2/3 flip"
        headers = [th.text for th in driver.find_elements("css selector", "#rows-head th")]
        assert headers[-2:] == ["sentence on view swap-type", "A on swap-type"]
    finally:
        driver.quit()


def _right(preds, trials, source):
    votes = [preds[t.trial_id][source]["pred"] == preds[t.trial_id][source]["gold"] for t in trials]
    return 2 * sum(votes) > len(votes)


@pytest.mark.slow
def test_demo_study_browser_in_headless_chromium(demo, tmp_path):  # noqa: F811
    spec, trials, summary = demo
    page = summary / "error_browser.html"
    assert page.is_file()
    # The same page is an artifact of the study's MLflow run.
    from recon.orchestration.study.tracker import StudyTracker

    tracker = StudyTracker(spec.resolved_tracking_uri(), spec.name, create=False)
    parent = tracker._search("tags.`recon.role` = 'study'")[0]
    names = {a.path for a in tracker.client.list_artifacts(parent.info.run_id, "summary")}
    assert "summary/error_browser.html" in names and "summary/significance.csv" in names

    predictions = load_predictions(trials, lambda t: None)  # nothing: trial dirs are gone; read MLflow instead
    assert predictions == {}
    runs = tracker.trial_runs()
    downloaded = {t.trial_id: tracker.download(runs[t.trial_id].info.run_id, "predictions.jsonl", tmp_path / t.trial_id)
                  for t in trials}
    predictions = load_predictions(trials, lambda t: downloaded[t.trial_id])
    cell = lambda model, fmt: [t for t in trials if t.setting == "1%" and t.model == model and t.format == fmt]  # noqa: E731
    cm, onlyc = cell("Toy", "C+M"), cell("Toy", "OnlyC")
    sources = list(predictions[cm[0].trial_id])
    expected = [s for s in sources if _right(predictions, cm, s) and not _right(predictions, onlyc, s)]
    every = [t for t in trials if t.setting == "1%"]
    systems = Counter((t.model, t.format) for t in every)
    all_wrong = [s for s in sources if not any(_right(predictions, [t for t in every if (t.model, t.format) == k], s)
                                               for k in systems)]

    driver = _driver()
    try:
        driver.get(page.as_uri())
        assert driver.find_element("tag name", "body").get_attribute("data-ready") == "1"
        assert "SemEval 1% (272 examples)" in driver.find_element("id", "group").text
        assert _matching(driver) == 272
        headers = [th.text.replace("\n", " ") for th in driver.find_elements("css selector", "#rows-head th")]
        assert headers[4:] == ["Toy C+M", "Toy OnlyC", "Toy OnlyM", "Toy+CP C+M", "Toy+CP OnlyC", "Toy+CP OnlyM"]
        # "C+M right, OnlyC wrong" (A and B default to the first model's C+M and OnlyC).
        _select(driver, "filter", "a_right_b_wrong")
        assert _matching(driver) == len(expected) > 0
        shown = [tr.get_attribute("data-source") for tr in driver.find_elements("css selector", "#rows-body tr")]
        assert shown == expected[:50]
        first = driver.find_element("css selector", "#rows-body tr")
        assert first.find_elements("css selector", "td")[4].get_attribute("class") in ("ok", "mixed")
        assert first.find_elements("css selector", "span.h") and first.find_elements("css selector", "span.t")
        _select(driver, "filter", "all_wrong")
        assert _matching(driver) == len(all_wrong)
        # Confusion of A: clicking a cell filters gold / predicted label.
        _select(driver, "filter", "all")
        cells = [td for td in driver.find_elements("css selector", "#confusion td.n") if "zero" not in td.get_attribute("class")]
        cells[0].click()
        gold = driver.find_element("id", "gold").get_attribute("value")
        assert gold != "" and _matching(driver) <= 272
        assert "C+M" in driver.find_element("id", "pilot").text and "shared correct" in driver.find_element("id", "pilot").text
        # The view the screenshot keeps: the 10% test set, C+M right and OnlyC wrong.
        driver.find_element("id", "reset").click()
        _select(driver, "group", 1)
        _select(driver, "filter", "a_right_b_wrong")
        assert "10%" in driver.find_element("id", "count").text or _matching(driver) >= 0
        driver.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / "error_browser.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:4] == b"\x89PNG"
        keep = os.environ.get("RECON_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / "error_browser.png")
            shutil.copy(page, Path(keep) / "error_browser.html")
    finally:
        driver.quit()


# ------------------------------------------------------------------ the path the demo runs

DATA = Path(os.environ.get("RECON_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
PORTABLE = r"semeval/test\.txt:\d+"


def _page_data(page: Path) -> dict:
    return json.loads(page.read_text(encoding="utf-8").split('id="data">', 1)[1].split("</script>", 1)[0])


def _node_study(tmp_path: Path) -> Path:
    """A study on the built-in trainer (a tiny BERT): data published to storage, read from the node cache."""
    from tiny_bert import make_tiny_bert_dir

    encoder = make_tiny_bert_dir(tmp_path, mlm=True)
    path = tmp_path / "study.yaml"
    path.write_text(f"""
name: browser
encoder: {encoder}
models: [{{name: Tiny}}]
grids:
  - {{table: table5, datasets: [semeval], splits: [0.01], formats: [C+M, OnlyC]}}
seeds: [42]
training: {{epochs: 1, batch_size: 16, lr: 1.0e-3, max_train_steps: 2}}
data: {{split_source: paper, max_eval: 30, max_length: 32, data_dir: {DATA}}}
ray: {{cpus_per_trial: 1, num_cpus: 2, max_concurrent_trials: 1}}
output_dir: {tmp_path / 'out'}
""")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("storage", [False, True], ids=["local", "storage"])
def test_study_browser_shows_every_sentence_read_from_the_node_cache(tmp_path, storage):
    """The demo's path: `recon study run` (storage in the output folder, or `--storage`): the driver
    publishes the data, trials read the test file from this node's cache (a directory named by a hash
    under $RECON_CACHE_DIR), the report loads it from the data directory."""
    import re
    import subprocess
    import sys

    driver = _driver()  # skips (fails under CI) before the study runs when there is no browser
    try:
        path = _node_study(tmp_path)
        cache = tmp_path / "node-home" / ".cache" / "recon" / "storage"
        env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RECON_STORAGE")},
               "RECON_CACHE_DIR": str(cache)}
        flags = ["--storage", str(tmp_path / "store")] if storage else []
        run = subprocess.run([sys.executable, "-m", "recon.orchestration.cli.main", "study", "run", str(path), *flags],
                             env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
        console = run.stdout + run.stderr
        assert run.returncode == 0, console[-4000:]
        assert list(cache.glob("data/*/semeval/test.txt")), "the trials did not read from the node cache"
        assert storage == (tmp_path / "store" / "results").is_dir()
        page = tmp_path / "out" / "summary" / "error_browser.html"
        html = page.read_text(encoding="utf-8")
        group = _page_data(page)["groups"][0]
        texts = group.get("text") or [""] * len(group["sources"])
        without_sentence = sum(not (t and "\x01" in t and "\x03" in t) for t in texts)
        not_portable = [s for s in group["sources"] if not re.fullmatch(PORTABLE, s)]
        assert (len(group["sources"]), without_sentence, not_portable[:1]) == (30, 0, [])
        assert str(cache) not in html and str(tmp_path) not in html and str(DATA) not in html
        assert group.get("unjoined", 0) == 0 and "could not be joined" not in console

        driver.get(page.as_uri())
        assert driver.find_element("tag name", "body").get_attribute("data-ready") == "1"
        rows = driver.find_elements("css selector", "#rows-body tr")
        assert len(rows) == 30
        for row in rows:
            cells = row.find_elements("css selector", "td")
            assert re.fullmatch(PORTABLE, cells[1].text), cells[1].text
            sentence = cells[2]
            assert sentence.text.strip(), f"no sentence for {cells[1].text}"
            assert sentence.find_elements("css selector", "span.h") and sentence.find_elements("css selector", "span.t")
        assert not driver.find_elements("css selector", "#unjoined:not(:empty)")
        driver.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / f"error_browser_node_cache_{'storage' if storage else 'local'}.png"
        driver.save_screenshot(str(shot))
        keep = os.environ.get("RECON_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / shot.name)
            shutil.copy(page, Path(keep) / shot.with_suffix(".html").name)
    finally:
        driver.quit()
