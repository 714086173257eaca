"""Configuration from presets, TOML and `--set`; values that cannot work are refused before a
run folder exists; a resume that does not fit its run is refused before anything is written."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from facekd.app.cli import main
from facekd.config import PRESETS, RunConfig, apply_overrides, parse_assignments, resolve_config, resume_conflicts
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
    assert (cfg.lr, cfg.kd_weight, cfg.cwd_weight) == (5e-4, 0.5, 1.0)  # the rest is the preset's
    with pytest.raises(ValueError, match="--set: unknown config key 'lerning_rate'"):
        resolve_config("distill", "cpu", None, ["lerning_rate=1"])
    with pytest.raises(ValueError, match="'batch_size' must be int"):
        resolve_config("distill", "cpu", None, ["batch_size=8.5"])
    with pytest.raises(ValueError, match="expected key=value"):
        parse_assignments(["lr"])


def test_old_loss_weight_names_still_load(tmp_path):
    (tmp_path / "old.toml").write_text("kd = 0.0\ncwd = 2.0\ndice = 0.25\n")
    cfg = resolve_config("distill", "smoke", str(tmp_path / "old.toml"))
    assert (cfg.kd_weight, cfg.cwd_weight, cfg.dice_weight) == (0.0, 2.0, 0.25)


def test_a_loss_without_a_field_is_weighed_by_the_key_it_declares(tmp_path, monkeypatch):
    """A loss registered outside facekd/config.py (a plugin's) is turned on by its weight's
    name from a preset, a TOML file or --set, into loss_weights, checked as a field would be."""
    monkeypatch.setattr(LOSSES, "_entries", dict(LOSSES._entries))  # the registration ends with the test
    register_loss("toy", weight="toy_weight", uses="labels")(lambda logits, labels, cfg: logits.mean())
    monkeypatch.setitem(PRESETS["distill"], "toy", {"toy_weight": 0.5})
    assert resolve_config("distill", "toy").loss_weights == {"toy_weight": 0.5}
    (tmp_path / "toy.toml").write_text("toy_weight = 2\n")
    cfg = resolve_config("distill", "smoke", str(tmp_path / "toy.toml"), ["lr=1e-3"])
    assert cfg.loss_weights == {"toy_weight": 2.0} and weight_of(cfg, LOSSES["toy"]) == 2.0
    assert "toy" in [loss.name for loss in active_losses(cfg)]
    assert resolve_config("distill", "smoke", None, ["toy_weight=1"]).loss_weights == {"toy_weight": 1.0}
    for bad, message in (("toy_weight=-1", "toy_weight must not be negative"),
                         ("toy_weight=inf", "toy_weight must be a finite number"),
                         ("toy_weight=true", "'toy_weight' must be float"),
                         ("toy_wieght=1", "unknown config key 'toy_wieght'")):
        with pytest.raises(ValueError, match=message):
            resolve_config("distill", "smoke", None, [bad])
    with pytest.raises(ValueError, match="'kd_weight' is not the weight of a registered loss without"):
        RunConfig(loss_weights={"kd_weight": 1.0})  # a built-in weight has its field
    # a resumed run may not change it; a snapshot from before loss_weights existed is no conflict
    assert resume_conflicts({"loss_weights": {}}, {"loss_weights": cfg.loss_weights})
    before = {key: value for key, value in cfg.to_dict().items() if key != "loss_weights"}
    assert not resume_conflicts(before, cfg.to_dict())


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
        train_teacher(tiny(), data_copy, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_with_another_model_or_preset_is_refused_before_anything_changes(tmp_path, sample_root):
    run = tmp_path / "run"
    train_teacher(tiny(), sample_root, run, progress=False)
    snapshot = (run / "config.json").read_text()
    last = (run / "last.pt").stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"cannot be resumed.*model_cfg.*model: 'teacher_tiny' != 'tiny'"):
        train_teacher(tiny(model="tiny"), sample_root, run, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"cannot be resumed.*lr: 0\.002 != 0\.5"):
        train_teacher(tiny(lr=0.5), sample_root, run, resume=True, progress=False)
    assert (run / "config.json").read_text() == snapshot and (run / "last.pt").stat().st_mtime_ns == last


def test_resume_without_a_run_says_so_and_starts_fresh(tmp_path, sample_root, capsys):
    train_teacher(tiny(), sample_root, tmp_path / "new", resume=True, progress=False)
    assert "holds no last.pt, so this run starts from scratch" in capsys.readouterr().out
    assert (tmp_path / "new" / "last.pt").is_file()


def test_every_run_logs_its_settings_and_score_to_the_hparams_tab(tmp_path, sample_root):
    result = train_teacher(tiny(), sample_root, tmp_path / "run", progress=False)
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
