"""Configuration from presets, TOML and `--set`; values that cannot work are refused before a
run folder exists; a resume that does not fit its run is refused before anything is written."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from facekd.app.cli import main
from facekd.config import (PRESETS, RunConfig, apply_overrides, config_from_saved, parse_assignments, resolve_config,
                           resume_conflicts, saved_config)
from facekd.losses import active_losses, register_loss, weight_of
from facekd.registry import LOSSES
from teachers.train import train_teacher

TINY = dict(model="teacher_tiny", resolutions=[[64, 1]], batch_size=4, threads=1)


def tiny(**overrides) -> RunConfig:
    return apply_overrides(RunConfig(), {**TINY, **overrides})


def test_set_values_are_typed_as_toml_and_checked_like_files(tmp_path):
    assert parse_assignments(["lr=1e-3", "resolutions=[[96, 2]]", "flip_tta=false", "model=unet"]) == \
        {"lr": 1e-3, "resolutions": [[96, 2]], "flip_tta": False, "model": "unet"}
    cfg = resolve_config("distill", "cpu", None, ["lr=5e-4", "kd_weight=0.5"])
    assert (cfg.lr, cfg.loss_weights) == (5e-4, {"ce": 1.0, "cwd": 1.0, "dice": 0.5, "kd": 0.5})  # the rest: the preset's
    with pytest.raises(ValueError, match="--set: unknown config key 'lerning_rate'"):
        resolve_config("distill", "cpu", None, ["lerning_rate=1"])
    with pytest.raises(ValueError, match="'batch_size' must be int"):
        resolve_config("distill", "cpu", None, ["batch_size=8.5"])
    with pytest.raises(ValueError, match="expected key=value"):
        parse_assignments(["lr"])


def test_every_spelling_of_a_loss_weight_lands_in_loss_weights(tmp_path):
    """Issue 35: one path for loss weights. `kd = 0` (the oldest TOML files), `kd_weight = 1`
    (a field of its own until issue 35, and the --set spelling still) and `loss_weights =
    {kd = 1}` all set loss_weights["kd"]; a table adds to the preset's weights; 0 is off."""
    (tmp_path / "old.toml").write_text("kd = 0.0\ncwd = 2.0\ndice = 0.25\n")
    assert resolve_config("distill", "smoke", str(tmp_path / "old.toml")).loss_weights == \
        {"ce": 1.0, "cwd": 2.0, "dice": 0.25}
    (tmp_path / "table.toml").write_text("loss_weights = {kd = 2, ce = 0}\n")
    cfg = resolve_config("distill", "cpu", str(tmp_path / "table.toml"), ["dist_weight=0.5"])
    assert cfg.loss_weights == {"cwd": 1.0, "dice": 0.5, "dist": 0.5, "kd": 2.0}
    assert [loss.name for loss in active_losses(cfg)] == ["dice", "kd", "cwd", "dist"]  # registration order
    assert "loss_weights" in RunConfig().to_dict() and "kd_weight" not in RunConfig().to_dict()


def test_a_config_saved_before_issue_35_reads_in_todays_keys():
    """config.json, last.pt and best.pt of before kept each built-in weight in a field of its
    own, and a plugin's in loss_weights under its weight's name."""
    saved = {"lr": 1e-3, "ce_weight": 1.0, "dice_weight": 0.5, "kd_weight": 0.0, "cwd_weight": 1.0,
             "dist_weight": 0.0, "loss_weights": {"toy_weight": 2.0}, "data_root": "/data"}
    assert saved_config(saved) == {"lr": 1e-3, "data_root": "/data",
                                   "loss_weights": {"ce": 1.0, "dice": 0.5, "cwd": 1.0, "toy": 2.0}}
    cfg = config_from_saved({**saved, "loss_weights": {}, "ce_weight": 0.0})
    assert cfg.loss_weights == {"cwd": 1.0, "dice": 0.5} and cfg.lr == 1e-3  # replaced, not added to the defaults
    # resuming compares in today's keys: the same weights are no conflict, other ones are
    today = apply_overrides(RunConfig(), {"lr": 1e-3, "dice_weight": 0.5, "cwd_weight": 1.0, "toy_weight": 2.0})
    assert not resume_conflicts(saved, today.to_dict())
    assert resume_conflicts(saved, apply_overrides(today, {"cwd_weight": 2.0}).to_dict()) == \
        ["loss_weights: {'ce': 1.0, 'dice': 0.5, 'cwd': 1.0, 'toy': 2.0} != "
         "{'ce': 1.0, 'cwd': 2.0, 'dice': 0.5, 'toy': 2.0}"]


def test_a_plugin_loss_is_weighed_like_a_built_in_one(tmp_path, monkeypatch):
    """A loss registered outside facekd/config.py (a plugin's) is turned on by its weight's
    name from a preset, a TOML file or --set, checked as a built-in one's would be."""
    monkeypatch.setattr(LOSSES, "_entries", dict(LOSSES._entries))  # the registration ends with the test
    register_loss("toy", uses="labels")(lambda logits, labels, cfg: logits.mean())
    monkeypatch.setitem(PRESETS["distill"], "toy", {"toy_weight": 0.5})
    assert resolve_config("distill", "toy").loss_weights == {"ce": 1.0, "toy": 0.5}
    (tmp_path / "toy.toml").write_text("toy_weight = 2\n")
    cfg = resolve_config("distill", "smoke", str(tmp_path / "toy.toml"), ["lr=1e-3"])
    assert cfg.loss_weights["toy"] == 2.0 and weight_of(cfg, LOSSES["toy"]) == 2.0
    assert "toy" in [loss.name for loss in active_losses(cfg)]
    for bad, message in (("toy_weight=-1", "toy_weight must not be negative"),
                         ("toy_weight=inf", "toy_weight must be a finite number"),
                         ("toy_weight=true", "'toy_weight' must be float"),
                         ("toy_wieght=1", "unknown config key 'toy_wieght'"),
                         ("toyy_weight=1", "toyy_weight: no such loss; the registered ones are ce_weight")):
        with pytest.raises(ValueError, match=message):
            resolve_config("distill", "smoke", None, [bad])
    # a resumed run may not change it
    assert resume_conflicts({"loss_weights": {}}, {"loss_weights": cfg.loss_weights})


@pytest.mark.parametrize("bad, message", [
    ({"batch_size": 0}, "batch_size must be at least 2"),
    ({"batch_size": 1}, "batch_size must be at least 2"),
    ({"resolutions": [[256, 2], []]}, "resolutions must be a non-empty list"),
    ({"resolutions": []}, "resolutions must be a non-empty list"),
    ({"resolutions": [[256, 0]]}, "every phase at least 1 epoch"),
    ({"resolutions": [[100, 2]]}, "multiple of 32"),
    ({"lr": -1e-3}, "lr must be positive"),
    ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
    ({"eval_every": 0}, "eval_every must be at least 1"),
    ({"kd_weight": -1.0}, "kd_weight must not be negative"),
    ({"budget_minutes": -2.0}, "budget_minutes must not be negative"),
])
def test_values_that_cannot_work_are_refused_with_their_source(bad, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        apply_overrides(RunConfig(), bad)
    (tmp_path / "bad.toml").write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in bad.items()) + "\n")
    with pytest.raises(ValueError, match="bad.toml: "):
        resolve_config("teacher", "smoke", str(tmp_path / "bad.toml"))


def test_cli_with_a_bad_value_leaves_no_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train-teacher", "--out", str(run), "--set", "batch_size=0"]) != 0
    assert "batch_size must be at least 2" in capsys.readouterr().err
    assert not run.exists()


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tmp_path, data_copy):
    for mask in sorted((data_copy / "train" / "masks").glob("*.png"))[1:]:
        mask.unlink()  # one pair left: too few for a BatchNorm step
    with pytest.raises(ValueError, match="1 training pair"):
        train_teacher(tiny(), data_copy, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_with_another_model_or_preset_is_refused_before_anything_changes(tmp_path, sample_root):
    run = tmp_path / "run"
    train_teacher(tiny(), sample_root, run, show_progress=False)
    snapshot = (run / "config.json").read_text()
    last = (run / "last.pt").stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"cannot be resumed.*model_cfg.*model: 'teacher_tiny' != 'tiny'"):
        train_teacher(tiny(model="tiny"), sample_root, run, resume=True, show_progress=False)
    with pytest.raises(ValueError, match=r"cannot be resumed.*lr: 0\.002 != 0\.5"):
        train_teacher(tiny(lr=0.5), sample_root, run, resume=True, show_progress=False)
    assert (run / "config.json").read_text() == snapshot and (run / "last.pt").stat().st_mtime_ns == last


def test_resume_without_a_run_says_so_and_starts_fresh(tmp_path, sample_root, capsys):
    train_teacher(tiny(), sample_root, tmp_path / "new", resume=True, show_progress=False)
    assert "holds no last.pt, so this run starts from scratch" in capsys.readouterr().err
    assert (tmp_path / "new" / "last.pt").is_file()


def test_every_run_logs_its_settings_and_score_to_the_hparams_tab(tmp_path, sample_root):
    result = train_teacher(tiny(), sample_root, tmp_path / "run", show_progress=False)
    events = list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert len(events) == 1  # one run, one events file
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    assert acc.Scalars("hparam/val_fscore")[-1].value == pytest.approx(result["val_fscore"])


def test_the_data_root_is_an_argument_not_a_config_key():
    # RunConfig.data was read by nothing, so `--set data=...` was accepted and ignored
    with pytest.raises(ValueError, match="unknown config key 'data'"):
        resolve_config("distill", "smoke", None, ["data='elsewhere'"])
