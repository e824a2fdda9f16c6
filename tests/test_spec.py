"""Study spec validation: unknown fields, bad splits and formats are reported with file, field and line."""
from pathlib import Path

import pytest

from recon.orchestration.study.spec import SpecError, load_spec

FIXTURES = Path(__file__).parent / "fixtures" / "studies"
STUDIES = Path(__file__).parent.parent / "studies"


def test_unknown_field_names_file_field_and_line():
    with pytest.raises(SpecError) as err:
        load_spec(FIXTURES / "bad_field.yaml")
    msg = str(err.value)
    assert "bad_field.yaml" in msg and "line 8" in msg and "grids.0.formatz" in msg and "unknown field" in msg


def test_bad_split_is_rejected_with_location():
    with pytest.raises(SpecError) as err:
        load_spec(FIXTURES / "bad_split.yaml")
    msg = str(err.value)
    assert "bad_split.yaml" in msg and "grids.0.splits" in msg and "1.5" in msg and "line 7" in msg


def test_bad_format_is_rejected_with_location():
    with pytest.raises(SpecError) as err:
        load_spec(FIXTURES / "bad_format.yaml")
    msg = str(err.value)
    assert "grids.0.formats" in msg and "OnlyX" in msg and "line 9" in msg


def test_defaults_are_merged_and_override(tmp_path):
    spec = load_spec(FIXTURES / "child.yaml")
    assert spec.name == "toy-child" and spec.seeds == [42, 43, 44]
    assert spec.training.epochs == 5 and spec.training.lr == 3e-5 and spec.data.max_length is None
    assert spec.data.max_eval == 200 and spec.trainer == "toy_trainer.py:train"  # inherited from toy_study.yaml
    assert spec.grids[0].formats == ["C+M", "OnlyC"]


def test_format_names_are_normalised_and_paper_defaults_apply(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmodels: [{name: BERT}]\ngrids: [{datasets: [chemprot], formats: [c+m, onlyc]}]\n")
    spec = load_spec(path)
    assert spec.grids[0].formats == ["C+M", "OnlyC"]
    assert spec.seeds == [42, 43, 44, 45, 46]
    assert (spec.training.lr, spec.training.batch_size, spec.training.epochs) == (3e-5, 64, 6)
    assert spec.data.max_length is None  # the dataset's: 100 for supervised RE (registry)


def test_unknown_model_reference_and_missing_stage(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmodels: [{name: CP, checkpoint: '@pretrain.cp'}]\ngrids: [{datasets: [semeval]}]\n")
    with pytest.raises(SpecError, match="no stage 'cp'"):
        load_spec(path)
    path.write_text("name: s\nmodels: [{name: BERT}]\ngrids: [{datasets: [semeval], models: [MTB]}]\n")
    with pytest.raises(SpecError, match="unknown model 'MTB'"):
        load_spec(path)


def test_shipped_studies_validate():
    paper = load_spec(STUDIES / "paper.yaml")
    demo = load_spec(STUDIES / "demo.yaml")
    assert {m.name for m in paper.models} == {"CNN", "BERT", "MTB", "CP"}
    assert demo.model("MiniLM+CP").pretrain_ref in demo.pretrain
