import pytest
import torch

import students
import teachers
from facekd.models import build_model, named_config


@pytest.mark.parametrize("name", ["resfpn", "unet"])
def test_shipped_students_fit_the_budget_and_predict_at_stride_4(name):
    model = students.build_student(students.STUDENTS[name])
    assert students.count_params(model) < students.PARAM_LIMIT
    out = model(torch.randn(1, 3, 128, 128))
    assert out.shape == (1, 19, 32, 32)


def test_over_budget_student_is_refused_unless_asked():
    with pytest.raises(ValueError, match="over the challenge limit"):
        students.build_student(students.STUDENTS["resfpn_wide"])
    wide = students.build_student(students.STUDENTS["resfpn_wide"], allow_over_budget=True)
    assert students.count_params(wide) >= students.PARAM_LIMIT


@pytest.mark.parametrize("name", ["resfpn", "unet", "tiny"])
def test_config_round_trip_rebuilds_identical_model(name):
    model = students.build_student(students.STUDENTS[name], allow_over_budget=True).eval()
    rebuilt = students.build_student(students.model_config(model), allow_over_budget=True).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), rebuilt(x))


def test_students_import_nothing_but_torch():
    import ast
    from pathlib import Path
    for path in Path(students.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] in {"torch", "students", "__future__"}, f"{path.name} imports {name}"


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
