"""Ensemble teachers (teachers/ensemble.py, distill/teacher.py) and the DIST loss: --teacher
given twice means an ensemble that every member of is used and recorded, its stored targets
are the mean of the members', the cache misses when any member changes, its val F is scored,
and export refuses it."""

import json

import pytest
import torch

from facekd.losses import dist_loss
from facekd.registry import LOSSES
from distill.soft_targets import offline_soft_targets
from distill.teacher import frozen_teacher, teacher_paths, teacher_record
from facekd.app.cli import main
from facekd.models import build_model, named_config
from teachers.ensemble import model_or_ensemble
from facekd.checkpoint import save_checkpoint
from facekd.files import load_checkpoint
from facekd.config import RunConfig, apply_overrides
from facekd.data import SAMPLE_DATA, load_split
from facekd.evaluation import evaluate
from facekd.labels import NUM_CLASSES
from teachers.ensemble import Ensemble

STORED = 16  # the side of the stored maps in these tests


def _model_file(path, name: str, input_size: int, seed: int):
    torch.manual_seed(seed)
    cfg = named_config(name, input_size)
    save_checkpoint({"model": build_model(cfg).state_dict(), "model_cfg": cfg, "val_fscore": 0.5}, path)
    return str(path)


@pytest.fixture
def members(tmp_path):
    """Two members that differ in architecture and input size (and so in output stride)."""
    return [_model_file(tmp_path / "a.pt", "teacher_tiny", 64, 0), _model_file(tmp_path / "b.pt", "tiny", 96, 1)]


def test_teacher_values_name_none_one_or_several():
    assert teacher_paths(None) == [] and teacher_paths("none") == [] and teacher_paths(["None"]) == []
    assert teacher_paths("t.pt") == ["t.pt"] and teacher_record(["t.pt"]) == "t.pt"
    assert teacher_record(["a.pt", "b.pt"]) == ["a.pt", "b.pt"] and teacher_record(None) == "none"
    with pytest.raises(ValueError, match="cannot be combined"):
        teacher_paths(["none", "a.pt"])


def test_stored_targets_are_the_mean_of_the_members(tmp_path):
    # two architectures at one input size: with different sizes the ensemble decodes the images
    # once at the largest and resizes them for the others, which a member alone would not
    members = [_model_file(tmp_path / "a.pt", "teacher_tiny", 64, 0), _model_file(tmp_path / "b.pt", "tiny", 64, 1)]
    cfg = RunConfig()
    ensemble, info = frozen_teacher(members)
    assert isinstance(ensemble, Ensemble) and [m["path"] for m in info["members"]] == members
    targets, _ = offline_soft_targets(cfg, ensemble, members, SAMPLE_DATA, STORED, show_progress=False)
    alone = [offline_soft_targets(cfg, frozen_teacher(p)[0], [p], SAMPLE_DATA, STORED, show_progress=False)[0]
             for p in members]
    mean = (alone[0].float() + alone[1].float()) / 2
    assert targets.dtype == torch.float16 and targets.shape == (16, NUM_CLASSES, STORED, STORED)
    # float16 keeps 11 significant bits: each member's map and the mean are rounded once
    torch.testing.assert_close(targets.float(), mean, rtol=2 ** -10, atol=2 ** -10 * mean.abs().max().item())
    assert not torch.allclose(alone[0].float(), alone[1].float()), "the members must differ for this to test anything"


def test_cache_misses_when_any_member_changes(tmp_path, members):
    cfg = RunConfig(soft_target_cache=str(tmp_path / "cache"))

    def run():
        return offline_soft_targets(cfg, frozen_teacher(members)[0], members, SAMPLE_DATA, STORED, show_progress=False)[1]

    assert run()["cache"] == "miss" and run()["cache"] == "hit"
    _model_file(members[1], "tiny", 96, 7)  # the second member retrained: same file, other weights
    assert run()["cache"] == "miss" and run()["cache"] == "hit"
    one = offline_soft_targets(cfg, frozen_teacher(members[0])[0], [members[0]], SAMPLE_DATA, STORED, show_progress=False)[1]
    assert one["cache"] == "miss", "one member alone is another teacher"


def test_ensemble_forward_runs_each_member_at_its_share_of_the_input(members):
    ensemble, _ = model_or_ensemble(members)
    assert ensemble.input_size == 96
    x = torch.randn(2, 3, 96, 96)
    a, b = ensemble.members
    expected = (torch.nn.functional.interpolate(a(torch.nn.functional.interpolate(
        x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)), size=(24, 24), mode="bilinear",
        align_corners=False) + b(x)) / 2
    torch.testing.assert_close(ensemble(x), expected, rtol=1e-4, atol=1e-5)


def test_distill_with_two_teachers_uses_and_records_both(tmp_path, members, capsys):
    out = tmp_path / "run"
    assert main(["distill", "--teacher", members[0], "--teacher", members[1], "--out", str(out),
                 "--set", "distill_mode=offline", "--set", "resolutions=[[64, 1]]", "--set", "dist_weight=1.0"]) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["teacher"] == members
    assert [m["path"] for m in record["teacher_members"]] == members
    assert record["soft_targets"]["teacher_input_sizes"] == [64, 96]
    ensemble, _ = model_or_ensemble(members)
    val = load_split(SAMPLE_DATA, "val", None, show_progress=False)
    assert record["teacher_val_fscore"] == pytest.approx(evaluate(ensemble, val, 96, True)["fscore"], abs=1e-6)
    epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert epoch["loss/kd"] > 0 and epoch["loss/cwd"] > 0 and epoch["loss/dist"] > 0


def test_online_distillation_from_an_ensemble_runs(tmp_path, members):
    out = tmp_path / "run"
    assert main(["distill", "--teacher", members[0], "--teacher", members[1], "--out", str(out),
                 "--set", "resolutions=[[64, 1]]"]) == 0
    assert json.loads((out / "config.json").read_text())["teacher"] == members


def test_export_refuses_an_ensemble(tmp_path, members, capsys):
    assert main(["export", "--checkpoint", members[0], "--checkpoint", members[1], "--out", str(tmp_path / "s")]) == 2
    assert "an ensemble cannot be exported" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_predict_with_several_weights_writes_the_ensemble_masks(tmp_path, members):
    image = sorted((SAMPLE_DATA / "val" / "images").iterdir())[0]
    assert main(["predict", "--weights", members[0], "--weights", members[1], "--input", str(image),
                 "--output", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / f"{image.stem}.png").is_file()


def test_best_checkpoint_records_training_cost_summed_over_resumes(tmp_path, kill_after_epoch):
    out = tmp_path / "run"
    args = ["distill", "--teacher", "none", "--out", str(out), "--set", "resolutions=[[64, 2]]", "--set", "eval_every=1"]
    kill_after_epoch(0)
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", *args])
    first = load_checkpoint(out / "best.pt")
    kill_after_epoch(None)
    assert main([*args, "--resume"]) == 0
    last = load_checkpoint(out / "last.pt")
    assert first["images_seen"] == 16 and last["images_seen"] == 32
    best = load_checkpoint(out / "best.pt")
    assert best["images_seen"] in (16, 32) and best["train_seconds"] > 0
    assert last["train_seconds"] > first["train_seconds"]


# ---- DIST ------------------------------------------------------------------------------

def test_dist_is_registered_with_its_weight():
    assert LOSSES["dist"].setting == "dist_weight"
    assert apply_overrides(RunConfig(), {"dist_weight": 1.0}).loss_weights == {"ce": 1.0, "dist": 1.0}


def test_dist_is_zero_for_identical_logits():
    teacher = torch.randn(2, NUM_CLASSES, 6, 6)
    assert float(dist_loss(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-5)


def test_dist_ignores_a_per_pixel_positive_affine_change_of_the_student():
    teacher, student = torch.randn(2, NUM_CLASSES, 6, 6), torch.randn(2, NUM_CLASSES, 6, 6)
    scale = torch.rand(2, 1, 6, 6) * 5 + 0.1   # a positive factor per pixel
    shift = torch.randn(2, 1, 6, 6) * 10       # and an offset per pixel
    base = float(dist_loss(student, teacher))
    assert base > 0.1
    assert float(dist_loss(student * scale + shift, teacher)) == pytest.approx(base, rel=1e-4)
    # a negative factor reverses the ranking of the classes, which DIST must see
    assert float(dist_loss(-student, teacher)) != pytest.approx(base, rel=1e-2)


def test_dist_masks_pixels_and_backpropagates():
    teacher = torch.randn(2, NUM_CLASSES, 4, 4)
    student = teacher.clone()
    student[:, :, 0, 0] = torch.randn(2, NUM_CLASSES)
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[:, 0, 0] = False
    assert float(dist_loss(student, teacher, valid=valid)) == pytest.approx(0.0, abs=1e-5)
    student.requires_grad_(True)
    dist_loss(student, teacher).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
