"""Every registered student and teacher, and the layering that keeps the core below the stages."""

import ast
from pathlib import Path

import pytest
import torch

from compress.prune import prune_to_target, rebuild
from facekd import challenge
from facekd.app.export import export
from facekd.checkpoint import save_checkpoint
from facekd.files import load_checkpoint
from facekd.models import build_model, load_model, named_config
from facekd.registry import STUDENTS, TEACHERS

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", STUDENTS.names())
def test_every_registered_student_prunes_rebuilds_and_exports(name, tmp_path):
    """What the stages ask of a student: it counts, predicts at stride 4, prunes, rebuilds from
    config_from_weights alone, and exports to a solution that run.py can load."""
    model = build_model(named_config(name, 64), allow_over_budget=True).eval()
    n = challenge.count_params(model)
    assert (n >= challenge.PARAM_LIMIT) == named_config(name, 64).get("over_budget", False)
    x = torch.randn(1, 3, 64, 64)
    assert model(x).shape == (1, 19, 16, 16)
    # a share off every student, and an over-limit one below the limit, so that each exports
    target = min(int(n * 0.7), challenge.PARAM_LIMIT - 1)
    prune_to_target(model, target_params=target, example_size=64)
    model.eval()
    fresh, cfg = rebuild(model)
    assert torch.equal(fresh(x), model(x)) and challenge.count_params(fresh) <= target
    path = tmp_path / "best.pt"
    save_checkpoint({"model": fresh.state_dict(), "model_cfg": cfg, "stage": "distill", "val_fscore": 0.5}, path)
    export(path, tmp_path / "solution")
    assert (tmp_path / "solution" / "ckpt.pth").is_file()


def test_the_shipped_checkpoint_written_before_the_registries_still_loads():
    """solution/ckpt.pth was written on 2026-11-26, before students, teachers and losses
    registered by name; the two loaders still turn it into the model it was."""
    ckpt = load_checkpoint(REPO / "solution" / "ckpt.pth")
    model = load_model(ckpt, "solution/ckpt.pth")
    assert challenge.count_params(model) == ckpt["params"] == 1_372_419
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 19, 16, 16)


def test_over_budget_student_is_refused_unless_its_config_or_the_caller_allows_it():
    unmarked = {k: v for k, v in named_config("resfpn_wide", 512).items() if k != "over_budget"}
    with pytest.raises(ValueError, match="over the challenge limit"):
        build_model(unmarked)
    assert challenge.count_params(build_model(unmarked, allow_over_budget=True)) >= challenge.PARAM_LIMIT
    # the named wide student says it is meant to be pruned, so it needs no caller's permission
    wide = build_model(named_config("resfpn_wide", 512))
    assert challenge.count_params(wide) >= challenge.PARAM_LIMIT


def test_a_teacher_checkpoint_is_refused_where_a_student_is_needed():
    cfg = named_config("teacher_tiny", 64)
    with pytest.raises(ValueError, match="t.pt: is a teacher checkpoint; prune a student"):
        load_model({"model": build_model(cfg).state_dict(), "model_cfg": cfg}, "t.pt", student_for="prune")


def _imports(folder: Path):
    """(file, imported module) for every absolute import in a folder's own .py files."""
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from ((path, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                yield path, node.module


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_students_import_nothing_but_torch_and_what_the_solution_ships():
    # students ship in the solution folder, which has torch and these core modules only
    for path, name in _imports(REPO / "students"):
        assert name.split(".")[0] in {"torch", "students", "__future__"} or name in {
            "facekd.challenge", "facekd.registry"}, f"{path.name} imports {name}"


# The README's layering diagram, top to bottom: a module imports its own layer or those below.
# distill and compress share a layer (fine-tuning a pruned student is the distillation stage).
LAYERS = {"facekd.app": 4, "distill": 3, "compress": 3, "teachers": 2, "students": 1, "facekd": 0}


def _layer(name: str) -> int | None:
    """The layer of a project module (the longest package that holds it); None outside the project."""
    return next((LAYERS[p] for p in sorted(LAYERS, key=len, reverse=True) if _within(name, p)), None)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_every_import_points_down_the_layers(package):
    """One exception: a package's __main__.py (`python -m facekd`) hands the command line to the
    application layer, and nothing imports it."""
    for path, name in _imports(REPO / package.replace(".", "/")):
        if path.name == "__main__.py":
            continue
        target = _layer(name)
        assert target is None or target <= LAYERS[package], \
            f"{path.relative_to(REPO)} ({package}) imports {name}, a layer above it"


def test_teachers_never_download_or_load_pretrained_weights(monkeypatch):
    import timm.models._builder as builder
    import torch.hub

    def refuse(*args, **kwargs):
        raise AssertionError("a teacher tried to fetch pretrained weights")

    monkeypatch.setattr(builder, "load_pretrained", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", refuse, raising=False)
    for name in TEACHERS.names():
        if name == "teacher_gpu":
            continue  # same code path, just slow to build on CPU
        model = build_model(named_config(name, 64))
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 19, 16, 16)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        named_config("resnet9000", 64)
