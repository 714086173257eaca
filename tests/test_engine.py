import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch

import numpy as np

import facekd.engine as engine
from facekd.files import load_checkpoint
from facekd.app.cli import main
from distill.train import train_student
from facekd.config import RunConfig, apply_overrides, config_from_saved, load_toml, resolve_config
from facekd.metric import read_mask
from facekd.models import build_model, named_config
from teachers.train import train_teacher
from tests.reference import reference_fscore

TINY = dict(model="teacher_tiny", resolutions=[[64, 2]], batch_size=8, eval_every=1, warmup_epochs=0.5)


def tiny_config(**overrides) -> RunConfig:
    return apply_overrides(RunConfig(), {**TINY, **overrides})


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'lerning_rate'"):
        apply_overrides(RunConfig(), {"lerning_rate": 0.1})
    with pytest.raises(ValueError, match="'batch_size' must be int"):
        apply_overrides(RunConfig(), {"batch_size": "8"})
    (tmp_path / "bad.toml").write_text("lr = ")
    with pytest.raises(ValueError, match="bad.toml: invalid TOML"):
        load_toml(tmp_path / "bad.toml")
    (tmp_path / "ok.toml").write_text("lr = 1\nresolutions = [[96, 3]]\n")
    cfg = resolve_config("teacher", "smoke", str(tmp_path / "ok.toml"), seed=7)
    assert (cfg.lr, cfg.resolutions, cfg.seed, cfg.epochs) == (1.0, [[96, 3]], 7, 3)


def test_run_directory_holds_everything(tmp_path, sample_root):
    result = train_teacher(tiny_config(), sample_root, tmp_path / "run", show_progress=False)
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt", "config.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert {"loss/ce", "loss/loss", "images_per_s", "val_fscore"} <= set(records[-1])
    best = load_checkpoint(run / "best.pt")  # weights_only=True inside
    assert best["val_fscore"] == pytest.approx(max(r["val_fscore"] for r in records))
    assert result["val_fscore"] == best["val_fscore"]
    with pytest.raises(FileExistsError, match="--resume"):
        train_teacher(tiny_config(), sample_root, run, show_progress=False)


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, sample_root, kill_after_epoch):
    torch.set_num_threads(1)  # bit-exact comparison needs a fixed reduction order
    cfg = tiny_config(resolutions=[[64, 3]], eval_every=3)
    train_teacher(cfg, sample_root, tmp_path / "straight", show_progress=False)

    kill_after_epoch(0)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(cfg, sample_root, tmp_path / "killed", show_progress=False)
    kill_after_epoch(None)
    train_teacher(cfg, sample_root, tmp_path / "killed", resume=True, show_progress=False)

    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


# A run as the engine wrote it before its rewrite (issue 35), at commit b959395: the tiny
# student, labels alone, 3 epochs at 64 px on the embedded sample, killed after epoch 0.
RUN_BEFORE_ISSUE_35 = Path(__file__).parent / "fixtures" / "run_before_issue35"


def test_a_run_saved_before_the_engine_rewrite_resumes_and_exports(tmp_path, sample_root):
    run = tmp_path / "run"
    shutil.copytree(RUN_BEFORE_ISSUE_35, run)
    last = load_checkpoint(run / "last.pt")
    assert "ce_weight" in last["config"] and last["config"]["loss_weights"] == {}  # the old layout
    # the machine that wrote it had its own checkout: point the run at this one's sample
    last["config"]["data_root"] = str(sample_root.resolve())
    torch.save(last, run / "last.pt")
    cfg = config_from_saved(json.loads((run / "config.json").read_text()))
    assert cfg.loss_weights == {"ce": 1.0, "dice": 0.5} and cfg.resolutions == [[64, 3]]
    result = train_student(cfg, sample_root, run, None, resume=True, show_progress=False)
    # 16 pairs in batches of 8: 2 steps an epoch, epochs 1 and 2 trained here
    assert (result["epochs_started"], result["steps"], result["images_seen"]) == (3, 6, 48)
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "solution")]) == 0
    assert (tmp_path / "solution" / "ckpt.pth").is_file()


def test_the_training_step_is_written_out_one_frame_below_fit(tmp_path, sample_root):
    """Issue 35: the step sat seven frames below fit. The loss is called, and the optimiser
    stepped, in train_one_epoch, which fit calls."""
    callers = []

    def recording(logits, *args):
        callers.append([frame.function for frame in inspect.stack()[1:4]])
        return {"loss": logits.float().mean() * 0}
    model_cfg = named_config("tiny", 64)
    engine.fit(build_model(model_cfg), model_cfg, recording, tiny_config(resolutions=[[64, 1]]), tmp_path / "run",
               data_root=sample_root, stage="test", show_progress=False)
    assert callers and all(c[:2] == ["train_one_epoch", "fit"] for c in callers), callers[0]


def test_cli_train_predict_evaluate_matches_reference(tmp_path, sample_root, capsys):
    run = tmp_path / "teacher"
    assert main(["train-teacher", "--out", str(run)]) == 0
    preds = tmp_path / "pred"
    assert main(["predict", "--weights", str(run / "best.pt"), "--input", str(sample_root / "val" / "images"),
                 "--output", str(preds)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(preds), "--gt", str(sample_root / "val" / "masks"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    gts = sorted((sample_root / "val" / "masks").glob("*.png"))
    expected = np.mean([reference_fscore(read_mask(g), read_mask(preds / g.name)) for g in gts])
    assert summary["fscore"] == pytest.approx(expected, abs=1e-9)
    assert summary["images"] == len(gts) and "per_class" in summary


def test_cli_reports_bad_arguments_clearly(tmp_path, capsys, sample_root):
    assert main(["predict", "--weights", str(tmp_path / "nope.pt"), "--input", str(sample_root / "val" / "images"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "nope.pt: checkpoint not found" in capsys.readouterr().err
    assert main(["train-teacher", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "missing" in capsys.readouterr().err


def test_gpu_preset_runs_two_steps_on_cpu(tmp_path, sample_root):
    """The gpu recipe's training features (EMA, Dice, its lr and evaluation schedule) run on
    CPU; only the model, the resolution and the amount of data are shrunk."""
    gpu = resolve_config("distill", "gpu")
    assert gpu.ema_decay > 0 and gpu.loss_weights["dice"] > 0 and gpu.eval_every > 1  # what this test exercises
    # two steps: timm's EMA copies the weights outright on its first update
    cfg = apply_overrides(gpu, {"model": "tiny", "resolutions": [[64, 1]], "train_limit": 4, "batch_size": 2})
    result = train_student(cfg, sample_root, tmp_path / "gpu", "none", show_progress=False)
    run = tmp_path / "gpu"
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert result["epochs"] == 1 and last["step"] == 2
    saved = json.loads((run / "config.json").read_text())
    assert {k: saved[k] for k in ("lr", "ema_decay", "loss_weights", "eval_every")} == \
        {"lr": gpu.lr, "ema_decay": gpu.ema_decay, "loss_weights": gpu.loss_weights, "eval_every": gpu.eval_every}
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["loss/dice"] > 0 and "val_fscore" in record  # the last epoch is scored despite eval_every
    # the EMA took its step: it trails the trained weights, and it is what best.pt keeps
    moved = [k for k, v in last["model"].items() if v.is_floating_point() and not torch.equal(v, last["model_ema"][k])]
    assert moved
    for key in last["model_ema"]:
        assert torch.equal(best["model"][key], last["model_ema"][key]), key


def test_best_pt_is_written_only_when_the_score_improves(tmp_path, sample_root, monkeypatch):
    scores = iter([0.3, 0.5, 0.2])  # the second evaluation is the best; the third is worse
    real_evaluate = engine.evaluate

    def scripted(*args, **kwargs):
        out = real_evaluate(*args, **kwargs)
        if kwargs.get("return_preds"):  # validation, as opposed to any other use of evaluate
            out[0]["fscore"] = next(scores)
        return out

    monkeypatch.setattr(engine, "evaluate", scripted)
    result = train_teacher(tiny_config(resolutions=[[64, 3]]), sample_root, tmp_path / "run", show_progress=False)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert (best["epoch"], best["val_fscore"], result["val_fscore"]) == (1, 0.5, 0.5)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 2 and any(not torch.equal(v, best["model"][k]) for k, v in last["model"].items())


class _RunsCode:
    """Unpickling this calls exec: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_load_checkpoint_refuses_a_code_running_pickle(tmp_path):
    from facekd.checkpoint import save_checkpoint
    marker = tmp_path / "pwned"
    # a dict that would pass every later check, so only weights_only stands in the way
    save_checkpoint({"model": {}, "model_cfg": {"arch": "resfpn"}, "extra": _RunsCode(marker)}, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(ValueError, match="evil.pt: holds pickled Python objects.*refusing to load it"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()  # refused before any of its code ran


def test_a_save_killed_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from facekd.checkpoint import save_checkpoint
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "model_cfg": {"arch": "tiny"}}, path)

    def dies_mid_write(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # torch.save writes into the file object it is given
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "model_cfg": {"arch": "tiny"}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
