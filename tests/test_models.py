import ast
from pathlib import Path

import pytest
import torch

import students
from facekd import challenge
import teachers
from facekd.app.models import build_model, named_config

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["resfpn", "unet"])
def test_shipped_students_fit_the_budget_and_predict_at_stride_4(name):
    model = students.build_student(students.STUDENTS[name])
    assert challenge.count_params(model) < challenge.PARAM_LIMIT
    out = model(torch.randn(1, 3, 128, 128))
    assert out.shape == (1, 19, 32, 32)


def test_over_budget_student_is_refused_unless_its_config_or_the_caller_allows_it():
    unmarked = {k: v for k, v in students.STUDENTS["resfpn_wide"].items() if k != "over_budget"}
    with pytest.raises(ValueError, match="over the challenge limit"):
        students.build_student(unmarked)
    assert challenge.count_params(students.build_student(unmarked, allow_over_budget=True)) >= challenge.PARAM_LIMIT
    # the named wide student says it is meant to be pruned, so it needs no caller's permission
    wide = students.build_student(students.STUDENTS["resfpn_wide"])
    assert challenge.count_params(wide) >= challenge.PARAM_LIMIT


@pytest.mark.parametrize("name", ["resfpn", "unet", "tiny"])
def test_config_round_trip_rebuilds_identical_model(name):
    model = students.build_student(students.STUDENTS[name], allow_over_budget=True).eval()
    rebuilt = students.build_student(students.model_config(model), allow_over_budget=True).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), rebuilt(x))


def _imports(folder: Path):
    """(file, imported module) for every absolute import in a folder's own .py files."""
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from ((path, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                yield path, node.module


def test_students_import_nothing_but_torch_and_the_challenge_facts():
    # students ship in the solution folder, which has torch and facekd/challenge.py only
    for path, name in _imports(REPO / "students"):
        assert name.split(".")[0] in {"torch", "students", "__future__"} or name == "facekd.challenge", \
            f"{path.name} imports {name}"


STAGES = {"teachers", "students", "distill", "compress"}


def test_the_core_imports_no_stage_and_no_application_module():
    for path, name in _imports(REPO / "facekd"):
        if path.name == "__main__.py":  # `python -m facekd` is the CLI's entry point, not core
            continue
        assert name.split(".")[0] not in STAGES, f"facekd/{path.name} (core) imports the stage {name}"
        assert not name.startswith("facekd.app"), f"facekd/{path.name} (core) imports the application layer {name}"


def test_stages_use_the_application_layer_only_for_its_model_registry():
    for stage in sorted(STAGES):
        for path, name in _imports(REPO / stage):
            assert not name.startswith("facekd.app") or name == "facekd.app.models", \
                f"{stage}/{path.name} imports {name}"


def test_teachers_never_download_or_load_pretrained_weights(monkeypatch):
    import timm.models._builder as builder
    import torch.hub

    def refuse(*args, **kwargs):
        raise AssertionError("a teacher tried to fetch pretrained weights")

    monkeypatch.setattr(builder, "load_pretrained", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", refuse, raising=False)
    for name in teachers.TEACHERS:
        if name == "teacher_gpu":
            continue  # same code path, just slow to build on CPU
        model = build_model(named_config(name, 64))
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 19, 16, 16)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        named_config("resnet9000", 64)
