"""What names leak: seen / unseen entity pairs in the training subset and the pre-training corpus."""
import json

import pandas as pd
import pytest

from recon.data_prep.example import Entity, RelationExample
from recon.orchestration.report.name_leak import NameIndex, index_corpus, index_examples, normalise, seen_unseen

from test_significance import SEMEVAL, _corpus, demo  # noqa: F401 - the demo-shaped toy study


def _ex(tokens, head, tail, label="r", head_id=None, tail_id=None):
    return RelationExample(tuple(tokens.split()), Entity(*head, kb_id=head_id), Entity(*tail, kb_id=tail_id), label)


def test_normalised_names_and_unordered_pairs():
    assert normalise("U.S.") == "us" and normalise("Frye - Field") == normalise("frye-field") == "fryefield"
    index = index_examples([_ex("Bill Gates founded Microsoft .", (0, 2), (3, 4)),
                            _ex("Paris is in France", (0, 1), (3, 4), head_id="Q90", tail_id="Q142")])
    assert index.seen("microsoft", "bill gates") == (True, True, True)      # unordered, normalised
    assert index.seen("Bill Gates", "Apple") == (False, True, False)
    assert index.seen("Lutetia", "La France", "Q90", "Q142") == (True, True, True)  # by KB ids


def test_corpus_index_uses_mentions_and_entity_names(tmp_path):
    directory = _corpus(tmp_path / "corpus", n_test_pairs=3)
    index = index_corpus(directory)
    row = json.loads((directory / "shard-00000" / "part-0.json").read_text().splitlines()[0])
    head = " ".join(row["tokens"][row["head_start"]:row["head_end"]])
    tail = " ".join(row["tokens"][row["tail_start"]:row["tail_end"]])
    assert index.seen(tail.upper(), head)[0] and len(index.pairs) == 3


def test_seen_unseen_metrics_per_cell():
    rows = []
    for seed in (1, 2):
        for i in range(10):
            seen = i < 4
            rows.append({"trial_id": f"t{seed}", "dataset": "semeval", "setting": "10%", "format": "OnlyM",
                         "model": "BERT", "seed": seed, "metric": "micro_f1", "source": str(i), "head": "a",
                         "tail": "b", "gold": "X", "pred": "X" if seen or i == 9 else "Other",
                         "pair_train": seen, "head_train": seen, "tail_train": False,
                         "pair_pretrain": None, "head_pretrain": None, "tail_pretrain": None})
    table = seen_unseen(pd.DataFrame(rows))
    assert list(table["scope"]) == ["train"]  # no corpus: no pretrain scope
    r = table.iloc[0]
    assert r.n_seen == 4 and r.n_unseen == 6 and r.metric_seen == 1.0
    assert r.metric_unseen == pytest.approx(2 * 1 / (1 + 6))   # 1 of 6 right, nothing negative in gold
    assert r.tp_share_seen == pytest.approx(4 / 5) and r.gap == pytest.approx(1.0 - 2 / 7)


@pytest.mark.slow
def test_demo_study_seen_unseen_table_and_plot(demo):
    spec, trials, summary = demo
    table = pd.read_csv(summary / "name_leak.csv")
    assert set(table["scope"]) == {"train", "pretrain"}
    assert set(table[table.scope == "pretrain"]["model"]) == {"Toy+CP"}   # only the pre-trained model has a corpus
    train = table[table.scope == "train"]
    assert len(train) == 2 * 2 * 3 and (train["n_seen"] + train["n_unseen"]).eq(272).all()
    # The hand-made corpus holds 40 of the evaluated test pairs.
    assert table[table.scope == "pretrain"]["n_seen"].eq(40).all()
    # Training-subset flags re-derived from the trial config (paper file train_0.1.txt) match a direct lookup.
    flags = pd.read_csv(summary / "name_leak_examples.csv.gz")
    train_pairs = set()
    for line in (SEMEVAL / "train_0.1.txt").read_text().splitlines():
        ex = json.loads(line)
        h = normalise(" ".join(ex["token"][ex["h"]["pos"][0]:ex["h"]["pos"][1]]))
        t = normalise(" ".join(ex["token"][ex["t"]["pos"][0]:ex["t"]["pos"][1]]))
        train_pairs.add(tuple(sorted((h, t))))
    ten = flags[(flags.setting == "10%") & (flags.model == "Toy") & (flags.format == "C+M") & (flags.seed == 42)]
    direct = [tuple(sorted((normalise(h), normalise(t)))) in train_pairs for h, t in zip(ten["head"], ten["tail"])]
    assert list(ten["pair_train"]) == direct
    assert (summary / "name_leak_semeval.png").read_bytes()[:4] == b"\x89PNG"
    assert (summary / "name_leak_semeval_pretrain.png").is_file()
    print("\n" + (summary / "name_leak.md").read_text())
