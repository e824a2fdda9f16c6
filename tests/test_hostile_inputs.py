"""Hostile and broken inputs: every one gives a clear error naming file / line / field, and no output.

The corpus lives in ``tests/data/bad/`` (dataset files, study specs, corpora); checkpoint directories
and the 50 MB single line are made here from a real checkpoint / in ``tmp_path`` (not committed).
One parametrised test runs every input: the call must raise the project's own error type (never a
``UnicodeDecodeError``, ``RecursionError``, ``KeyError``... and never hang), its message must name the
file and, where one applies, the line / record and the field; nothing may be written next to the
input or in the working directory.
"""
from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from recon.core.errors import DataError, ReconError

BAD = Path(__file__).parent / "data" / "bad"
PWNED = "recon-hostile-pwned"


@dataclass
class Case:
    id: str
    run: Callable[[Path], object]     # gets the input's path (or the tmp copy it made) and loads it
    path: str                          # relative to tests/data/bad, or "gen:<name>" for generated inputs
    names: tuple[str, ...] = ()        # substrings the message must contain (line, field, reason)
    loads: bool = False                # a tolerated input: it must load (BOMs)
    error: type = ReconError
    xfail: Optional[str] = None        # a bug in a module that is not ours (fix proposed in the report)

    def __repr__(self) -> str:
        return self.id


def _load(kind: str):
    from recon.data_prep.loaders import load_file

    return lambda path: load_file(path, kind)


def _dataset(kind: str = "opennre"):
    from recon.data_prep.registry import load_dataset

    return lambda path: load_dataset(path=str(path), kind=kind)


def _spec(path: Path):
    from recon.orchestration.study.spec import load_spec

    return load_spec(path)


def _corpus(path: Path):
    from recon.data_prep.corpus import load_corpus

    return load_corpus(path)


def _checkpoint(path: Path):
    from recon.models.nets.checkpoint import load_checkpoint

    return load_checkpoint(path)


CASES = [
    # -- dataset files (one loader each) -------------------------------------------------------
    Case("truncated_line", _load("opennre"), "truncated_line.txt", ("line 2", "malformed JSON")),
    Case("truncated_last_line", _load("opennre"), "truncated_last_line_no_newline.txt", ("line 2", "malformed JSON")),
    Case("trailing_comma", _load("opennre"), "trailing_comma.txt", ("line 2", "malformed JSON")),
    Case("record_not_object", _load("opennre"), "record_not_object.txt", ("line 2", "expected a JSON object")),
    Case("tokens_not_strings", _load("opennre"), "tokens_not_strings.txt", ("line 1", "field 'token'")),
    Case("span_negative", _load("opennre"), "span_negative.txt", ("line 1", "field 'h.pos'", "out of range")),
    Case("span_past_end", _load("opennre"), "span_past_end.txt", ("line 2", "field 't.pos'", "out of range")),
    Case("span_float", _load("opennre"), "span_float.txt", ("line 1", "field 'h.pos'", "integers")),
    Case("span_nan", _load("opennre"), "span_nan.txt", ("line 1", "field 'h.pos'", "integers")),
    Case("relation_not_string", _load("opennre"), "relation_not_string.txt", ("line 1", "field 'relation'")),
    Case("deeply_nested_line", _load("opennre"), "deeply_nested.txt", ("line 1", "nested too deeply")),
    Case("latin1_line", _load("opennre"), "latin1.txt", ("line 2", "not UTF-8", "0xe9")),
    Case("utf16_file", _load("opennre"), "utf16.txt", ("line 1", "not UTF-8")),
    Case("binary_garbage", _load("opennre"), "binary_garbage.txt", ("line 1",)),
    Case("empty_jsonl", _load("opennre"), "empty.txt", ("empty",)),
    Case("whitespace_only", _load("opennre"), "whitespace_only.txt", ("empty",)),
    Case("bom_jsonl", _load("opennre"), "bom.txt", loads=True),
    Case("bom_fewrel", _load("fewrel"), "bom_fewrel.json", loads=True),
    Case("bom_tacred", _load("tacred"), "bom_tacred.json", loads=True),
    Case("chemprot_truncated", _load("chemprot"), "chemprot_truncated.txt", ("line 2", "malformed JSON")),
    Case("tacred_truncated", _load("tacred"), "tacred_truncated.json", ("line 33", "malformed JSON")),
    Case("tacred_span_out_of_range", _load("tacred"), "tacred_span_out_of_range.json",
         ("record 1", "field 'obj_start/obj_end'", "out of range")),
    Case("tacred_bad_tags", _load("tacred"), "tacred_bad_tags.json", ("record 0", "field 'stanford_ner'")),
    Case("tacred_deeply_nested", _load("tacred"), "tacred_deeply_nested.json", ("nested too deeply",)),
    Case("tacred_latin1", _load("tacred"), "latin1_tacred.json", ("line 21", "not UTF-8")),
    Case("tacred_empty", _load("tacred"), "empty_tacred.json", ("empty",)),
    Case("fewrel_truncated", _load("fewrel"), "fewrel_truncated.json", ("line 1", "malformed JSON")),
    Case("fewrel_top_list", _load("fewrel"), "fewrel_top_list.json", ("expects a JSON object",)),
    Case("fewrel_span_out_of_range", _load("fewrel"), "fewrel_span_out_of_range.json",
         ("record P1[0]", "field 't[2]'", "out of range")),
    Case("huge_single_line", _load("opennre"), "gen:huge_line", ("line 1", "malformed JSON")),
    Case("semeval2010_unbalanced_tags", _load("semeval2010"), "semeval2010_unbalanced_tags.TXT",
         ("line 5", "field 'sentence'", "</e2>")),
    Case("semeval2010_unknown_label", _load("semeval2010"), "semeval2010_unknown_label.TXT",
         ("line 6", "field 'label'", "Cause-Effect")),
    Case("semeval2010_number_repeats", _load("semeval2010"), "semeval2010_number_repeats.TXT",
         ("line 5", "field 'id'", "repeats")),
    Case("semeval2010_number_decreases", _load("semeval2010"), "semeval2010_number_decreases.TXT",
         ("line 9", "field 'id'", "does not increase")),
    Case("semeval2010_no_comment", _load("semeval2010"), "semeval2010_no_comment.TXT",
         ("line 7", "field 'comment'", "Comment:")),
    Case("semeval2010_unquoted", _load("semeval2010"), "semeval2010_unquoted.TXT",
         ("line 5", "field 'sentence'", "double quotes")),
    Case("semeval2010_utf16", _load("semeval2010"), "utf16.txt", ("line 1", "UTF-16")),
    Case("semeval2010_binary", _load("semeval2010"), "binary_garbage.txt", ("line 1", "binary")),
    Case("semeval2010_empty", _load("semeval2010"), "empty.txt", ("empty",)),
    # -- dataset directories -------------------------------------------------------------------
    Case("unknown_label", _dataset(), "unknown_label", ("test.txt", "line 2", "field 'relation'", "born_in")),
    Case("rel2id_gap", _dataset(), "rel2id_gap", ("rel2id.json", "0..n-1")),
    Case("rel2id_truncated", _dataset(), "rel2id_truncated", ("rel2id.json", "line 1", "malformed JSON")),
    # -- study specs ---------------------------------------------------------------------------
    Case("spec_wrong_type_seeds", _spec, "specs/wrong_type_seeds.yaml", ("line 6", "field 'seeds.1'")),
    Case("spec_wrong_type_epochs", _spec, "specs/wrong_type_epochs.yaml", ("line 7", "field 'training.epochs'")),
    Case("spec_models_not_list", _spec, "specs/models_not_list.yaml", ("line 2", "field 'models'")),
    Case("spec_unknown_top_key", _spec, "specs/unknown_top_key.yaml", ("line 6", "field 'seedz'", "unknown field")),
    Case("spec_unknown_ray_key", _spec, "specs/unknown_ray_key.yaml", ("line 7", "field 'ray.max_retriez'")),
    Case("spec_split_out_of_range", _spec, "specs/split_out_of_range.yaml", ("line 5", "field 'grids.0.splits'")),
    Case("spec_not_a_mapping", _spec, "specs/not_a_mapping.yaml", ("line 1", "mapping")),
    Case("spec_syntax_error", _spec, "specs/syntax_error.yaml", ("line 4", "not valid YAML")),
    Case("spec_empty", _spec, "specs/empty.yaml", ("field 'name'", "field 'models'")),
    Case("spec_defaults_loop", _spec, "specs/defaults_loop.yaml", ("loops",)),
    Case("spec_python_tag", _spec, "specs/python_tag.yaml", ("line 6",)),
    Case("spec_latin1", _spec, "specs/latin1.yaml", ("UTF-8",)),
    Case("spec_billion_laughs", _spec, "specs/billion_laughs.yaml", ()),
    # -- built corpora -------------------------------------------------------------------------
    Case("corpus_lying_shard_count", _corpus, "corpus_lying_shard_count",
         ("manifest.json", "field 'shards[0].examples'", "holds 2 rows")),
    Case("corpus_lying_total_count", _corpus, "corpus_lying_total_count",
         ("manifest.json", "field 'counts.examples'", "40")),
    Case("corpus_path_escape", _corpus, "corpus_path_escape", ("manifest.json", "field 'shards[0].files'")),
    Case("corpus_span_out_of_range", _corpus, "corpus_span_out_of_range", ("part-0.json", "line 2", "field 'head_start'")),
    Case("corpus_manifest_truncated", _corpus, "corpus_manifest_truncated", ("manifest.json", "line 1", "invalid JSON")),
    Case("corpus_row_latin1", _corpus, "corpus_row_latin1", ("part-0.json", "line 1", "UTF-8")),
    # -- checkpoints (made from a real tiny checkpoint, then damaged) ----------------------------
    Case("ckpt_manifest_truncated", _checkpoint, "gen:ckpt_manifest_truncated", ("recon.json", "line 1", "invalid JSON")),
    Case("ckpt_manifest_not_object", _checkpoint, "gen:ckpt_manifest_not_object", ("recon.json", "JSON object")),
    Case("ckpt_wrong_version", _checkpoint, "gen:ckpt_wrong_version", ("recon.json", "field 'format_version'")),
    Case("ckpt_no_special_tokens", _checkpoint, "gen:ckpt_no_special_tokens", ("recon.json", "field 'special_tokens'")),
    Case("ckpt_garbage_weights", _checkpoint, "gen:ckpt_garbage_weights", ("model.safetensors", "not a readable")),
    Case("ckpt_truncated_weights", _checkpoint, "gen:ckpt_truncated_weights", ("model.safetensors", "not a readable")),
    Case("ckpt_bad_config", _checkpoint, "gen:ckpt_bad_config", ("config.json",)),
    Case("ckpt_no_tokenizer", _checkpoint, "gen:ckpt_no_tokenizer", ("tokenizer_config.json",)),
    Case("ckpt_pickle_only", _checkpoint, "gen:ckpt_pickle_only", ("model.safetensors", "pickled")),
    Case("ckpt_pickle_no_manifest", _checkpoint, "gen:ckpt_pickle_no_manifest", ("recon.json", "pytorch_model.bin")),
    Case("ckpt_symlink_weights_outside", _checkpoint, "gen:ckpt_symlink_weights_outside",
         ("model.safetensors", "symlink", "outside")),
    Case("ckpt_symlink_config_to_etc", _checkpoint, "gen:ckpt_symlink_config_to_etc", ("config.json", "/etc/passwd")),
]


class _Boom:
    """Unpickling this creates a marker file: proof that a pickle was loaded."""

    def __reduce__(self):
        return (os.system, (f"touch /tmp/{PWNED}",))


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    import torch

    from recon.models.nets.checkpoint import save_checkpoint
    from recon.models.nets.loading import load_encoder
    from tiny_bert import make_tiny_bert_dir

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    bundle = load_encoder(str(make_tiny_bert_dir(root)))
    path = save_checkpoint(root / "good", bundle.model, bundle.tokenizer)
    shutil.rmtree(root / "tiny-bert")  # nothing to fall back on: a checkpoint must be self-contained
    return path


def _make(name: str, tmp: Path, good: Optional[Path]) -> Path:
    """A generated input: the 50 MB single line, or a damaged copy of a good checkpoint."""
    if name == "huge_line":
        path = tmp / "huge.txt"
        with path.open("w") as fh:  # one 50 MB line: a JSON string never closed
            fh.write('{"token": ["' + "x" * (50 * 1024 * 1024) + "\n")
        return path
    ckpt = tmp / name
    shutil.copytree(good, ckpt)
    manifest = json.loads((ckpt / "recon.json").read_text())
    if name == "ckpt_manifest_truncated":
        (ckpt / "recon.json").write_text(json.dumps(manifest)[:25])
    elif name == "ckpt_manifest_not_object":
        (ckpt / "recon.json").write_text("[1, 2, 3]")
    elif name == "ckpt_wrong_version":
        (ckpt / "recon.json").write_text(json.dumps({**manifest, "format_version": "1"}))
    elif name == "ckpt_no_special_tokens":
        (ckpt / "recon.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "special_tokens"}))
    elif name == "ckpt_garbage_weights":
        (ckpt / "model.safetensors").write_bytes(os.urandom(4096))
    elif name == "ckpt_truncated_weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif name == "ckpt_bad_config":
        (ckpt / "config.json").write_text('{"model_type": "bert", ')
    elif name == "ckpt_no_tokenizer":
        for p in ckpt.iterdir():
            if p.name.startswith(("tokenizer", "vocab", "special_tokens")):
                p.unlink()
    elif name == "ckpt_pickle_only":
        (ckpt / "model.safetensors").unlink()
        (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom()))
    elif name == "ckpt_pickle_no_manifest":
        for p in list(ckpt.iterdir()):
            p.unlink()
        (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom()))
        (ckpt / "model.pt").write_bytes(pickle.dumps(_Boom()))
    elif name == "ckpt_symlink_weights_outside":
        (ckpt / "model.safetensors").unlink()
        (ckpt / "model.safetensors").symlink_to(good / "model.safetensors")
    elif name == "ckpt_symlink_config_to_etc":
        (ckpt / "config.json").unlink()
        (ckpt / "config.json").symlink_to("/etc/passwd")
    else:  # pragma: no cover
        raise AssertionError(name)
    return ckpt


def _snapshot(*roots: Path) -> dict[str, tuple[int, float]]:
    out = {}
    for root in roots:
        for p in root.rglob("*"):
            if "__pycache__" not in p.parts:
                st = p.lstat()
                out[str(p)] = (st.st_size, st.st_mtime)
    return out


def _run_bounded(case: Case, path: Path) -> tuple[str, str]:
    """Run a spec case in a child with a time and memory bound (a YAML bomb must not hang the suite)."""
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))\n"
        "from recon.orchestration.study.spec import load_spec\n"
        "from recon.core.errors import ReconError\n"
        "try:\n    load_spec(sys.argv[1])\n    print('LOADED')\n"
        "except ReconError as exc:\n    print('RECON_ERROR'); print(exc)\n"
        "except BaseException as exc:\n    print('OTHER'); print(type(exc).__name__, exc)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=25)
    except subprocess.TimeoutExpired:
        return "TIMEOUT", ""
    head, _, rest = done.stdout.partition("\n")
    return head or f"CRASH rc={done.returncode}", rest + done.stderr[-500:]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                                               if c.xfail else []) for c in CASES])
def test_bad_input_gives_a_located_error_and_no_output(case, tmp_path, monkeypatch, request):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # anything written "here" would show up in the snapshot
    if case.path.startswith("gen:"):
        name = case.path[4:]
        good = request.getfixturevalue("good_checkpoint") if name.startswith("ckpt_") else None
        (tmp_path / "gen").mkdir()
        path = _make(name, tmp_path / "gen", good)
    else:
        path = BAD / case.path
        assert path.exists(), path
    before = _snapshot(BAD, tmp_path)
    if os.path.exists(f"/tmp/{PWNED}"):
        os.unlink(f"/tmp/{PWNED}")

    if case.run is _spec and case.id in ("spec_billion_laughs", "spec_python_tag", "spec_latin1"):
        outcome, message = _run_bounded(case, path)  # bounded: a bug here hangs or explodes in memory
        assert outcome == "RECON_ERROR", f"{outcome}: {message}"
    elif case.loads:
        assert len(case.run(path)) > 0
        message = ""
    else:
        with pytest.raises(case.error) as info:
            case.run(path)
        message = str(info.value)
    if not case.loads:
        assert str(path) in message or str(path.resolve()) in message, message[:300]
        for needle in case.names:
            assert needle in message, f"{needle!r} not in {message[:400]!r}"
        assert len(message) < 2000  # a 50 MB input never ends up in the message
    assert _snapshot(BAD, tmp_path) == before  # no partial output anywhere
    assert not os.path.exists(f"/tmp/{PWNED}")  # no pickle was ever loaded, no YAML tag executed


def test_corpus_counts_inputs():
    """The bad-input corpus, counted (the report quotes this number)."""
    on_disk = sum(1 for c in CASES if not c.path.startswith("gen:"))
    generated = sum(1 for c in CASES if c.path.startswith("gen:"))
    assert len({c.id for c in CASES}) == len(CASES) == 73 and (on_disk, generated) == (60, 13)


def test_skip_policy_counts_bad_encoding_and_keeps_the_good_lines():
    from recon.data_prep.loaders import LoadReport, load_file

    report = LoadReport()
    examples = load_file(BAD / "latin1.txt", "opennre", on_error="skip", report=report)
    assert len(examples) == 1 and report.skipped == {"bad_encoding": 1}
    assert report.locations["bad_encoding"] == [f"{BAD / 'latin1.txt'}:2"]


def test_bom_files_load_like_their_plain_twins(tmp_path):
    from recon.data_prep.loaders import load_file

    plain = tmp_path / "plain.txt"
    plain.write_bytes((BAD / "bom.txt").read_bytes()[3:])
    strip = lambda xs: [(x.tokens, x.head, x.tail, x.label) for x in xs]  # noqa: E731
    assert strip(load_file(BAD / "bom.txt", "opennre")) == strip(load_file(plain, "opennre"))


def test_pickle_next_to_safetensors_is_never_loaded(good_checkpoint, tmp_path):
    """A checkpoint that also holds pickles loads from safetensors alone; the pickles are never opened."""
    from recon.models.nets.checkpoint import load_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(good_checkpoint, ckpt)
    for name in ("pytorch_model.bin", "training_args.bin", "optimizer.pt"):
        (ckpt / name).write_bytes(pickle.dumps(_Boom()))
    if os.path.exists(f"/tmp/{PWNED}"):
        os.unlink(f"/tmp/{PWNED}")
    load_checkpoint(ckpt)
    assert not os.path.exists(f"/tmp/{PWNED}")


def test_a_json_lines_file_given_to_a_whole_document_kind_says_which_kinds_read_it(tmp_path):
    from recon.core.errors import DataError
    from recon.data_prep.loaders._common import read_json_document

    path = tmp_path / "train.json"
    path.write_text('{"token": ["a"], "h": {}, "t": {}}\n{"token": ["b"], "h": {}, "t": {}}\n')
    with pytest.raises(DataError) as err:
        read_json_document(path, list, "tacred")
    assert "line 2" in str(err.value) and "one JSON record per line" in str(err.value)
    assert "--kind of a JSON-lines format (opennre, chemprot)" in str(err.value)
    path.write_text('[{"id": 1}]\n[{"id": 2}]\n')  # two documents, not records: no such hint
    with pytest.raises(DataError) as err:
        read_json_document(path, list, "tacred")
    assert "Extra data" in str(err.value) and "JSON-lines" not in str(err.value)
