"""Issue 34, "faults found with bad inputs", items 1-8: each test failed before its fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compress.train
import facekd.engine as engine
from compress.quantize import quantize_checkpoint
from facekd.app.cli import main
from facekd.app.export import REPO_ROOT
from facekd.checkpoint import save_checkpoint
from facekd.config import RunConfig, apply_overrides, save_config
from facekd.cpu_kernels import conv_backward_at_risk
from facekd.data import SAMPLE_DATA
from facekd.losses import training_loss
from facekd.metric import read_mask
from facekd.models import build_model, named_config
from tests.test_export import facekd_cli, make_checkpoint
from tests.test_robustness import cli_error, save_ids

SMALL = ["--set", "resolutions=[[64, 1]]"]


@pytest.fixture
def student(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "student.pt", named_config("tiny", 64))


@pytest.fixture
def threads():
    """Restores torch's thread count, which a run's `threads` setting changes for the process."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# 1. odd batches crashed torch 2.14.1's oneDNN convolution backward on 2 threads

def _record_steps(tmp_path, **overrides) -> list[dict]:
    """Train the tiny student for an epoch of 7 images in batches of 4 (then 3), recording what
    each step's loss saw: the batch, its memory layout and whether oneDNN was on."""
    cfg = apply_overrides(RunConfig(), dict(model="tiny", resolutions=[[64, 1]], batch_size=4, train_limit=7,
                                            threads=2, **overrides))
    supervised, steps = training_loss(cfg), []

    def recording(logits, images, labels, soft_targets=None):
        steps.append({"batch": len(images), "onednn": torch.backends.mkldnn.enabled,
                      "channels_last": images.is_contiguous(memory_format=torch.channels_last)
                      and not images.is_contiguous()})
        return supervised(logits, images, labels)
    model_cfg = named_config("tiny", 64)
    engine.fit(build_model(model_cfg), model_cfg, recording, cfg, tmp_path / "run", data_root=SAMPLE_DATA,
               stage="teacher", show_progress=False)
    return steps


def test_odd_cpu_batches_step_with_onednn_off_and_even_ones_keep_it(tmp_path, threads):
    steps = _record_steps(tmp_path)
    assert [(s["batch"], s["onednn"]) for s in steps] == [(4, True), (3, False)]
    assert torch.backends.mkldnn.enabled  # given back after the step
    assert not conv_backward_at_risk(3, "cuda") and not conv_backward_at_risk(4, "cpu")


def test_channels_last_false_trains_on_contiguous_batches(tmp_path, threads):
    """transforms.train_batch made every batch channels_last, and a conv runs channels_last when
    its input is, so `--set channels_last=false` changed nothing that the kernels saw."""
    assert all(s["channels_last"] for s in _record_steps(tmp_path / "a"))
    assert not any(s["channels_last"] for s in _record_steps(tmp_path / "b", channels_last=False))


REPORTED_CONV = """
import torch
from facekd.cpu_kernels import safe_conv_backward
torch.set_num_threads(2)
conv = torch.nn.Conv2d(8, 16, 1, 2, bias=False).to(memory_format=torch.channels_last)
for _ in range(5):
    x = torch.randn(3, 8, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    with safe_conv_backward(3, "cpu"):
        conv(x).sum().backward()
print("survived")
"""


def test_odd_batches_train_in_a_fresh_process_without_a_crash(tmp_path):
    """In a process of its own, so that a crash fails this test instead of killing pytest: the
    reported conv under the step's guard, then a run whose every batch holds 3 (as the last of
    `--set train_limit=15` does)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", REPORTED_CONV], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "survived" in done.stdout, (done.returncode, done.stderr[-2000:])
    out = tmp_path / "run"
    done = facekd_cli("distill", "--teacher", "none", *SMALL, "--set", "threads=2", "--set", "batch_size=3",
                      "--set", "train_limit=15", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -11: SIGSEGV, -6: the double free
    assert (out / "best.pt").is_file()


# 2. evaluate scored ground truth holding ids above 18 without a word

@pytest.mark.parametrize("fault", ["id 25 in a corner", "all 255"])
def test_evaluate_refuses_ground_truth_holding_ids_above_18(tmp_path, capsys, fault):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for i, path in enumerate(sorted((SAMPLE_DATA / "val" / "masks").glob("*.png"))[:3]):
        mask = read_mask(path)
        save_ids(mask, pred_dir / f"{i}.png")
        if i == 1:
            mask = mask.copy()
            if fault == "all 255":
                mask[:] = 255
            else:
                mask[:50, :50] = 25
        save_ids(mask, gt_dir / f"{i}.png")
    err = cli_error(capsys, "evaluate", "--pred", pred_dir, "--gt", gt_dir)
    assert f"{gt_dir / '1.png'}: ground truth holds id(s) {255 if fault == 'all 255' else 25} outside 0..18" in err
    assert not capsys.readouterr().out  # no score printed


# 3. a resumed run could go on under a teacher rewritten in place

def _teacher_file(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    cfg = named_config("teacher_tiny", 64)
    save_checkpoint({"model": build_model(cfg).state_dict(), "model_cfg": cfg}, path)
    return str(path)


@pytest.mark.parametrize("members", [1, 2])
def test_resume_refuses_a_teacher_whose_content_changed(tmp_path, capsys, kill_after_epoch, members):
    teachers = [_teacher_file(tmp_path / f"t{i}.pt", seed=i) for i in range(members)]
    run = tmp_path / "run"
    argv = ["distill", "--out", str(run), "--set", "resolutions=[[64, 2]]", "--set", "batch_size=8"]
    argv += [arg for t in teachers for arg in ("--teacher", t)]
    kill_after_epoch(0)
    assert main(argv) == 130  # interrupted after epoch 0's last.pt
    kill_after_epoch(None)
    capsys.readouterr()
    changed = teachers[-1]
    original = Path(changed).read_bytes()
    _teacher_file(Path(changed), seed=7)  # what train-teacher --resume does to runs/teacher/best.pt
    err = cli_error(capsys, *argv, "--resume")
    assert f"--teacher {changed}: its content changed since the run started" in err
    assert all(f"--teacher {t}:" not in err for t in teachers[:-1])  # only the changed member is named
    Path(changed).write_bytes(original)
    assert main(argv + ["--resume"]) == 0


# 4. prune --resume ignored another --checkpoint or --ratio, and pruned into a distill run

def test_a_finished_prune_resumed_with_other_values_is_refused(tmp_path, capsys, student):
    out = tmp_path / "pruned"
    argv = ["prune", "--ratio", "0.3", "--round-to", "8", "--out", str(out), *SMALL]
    assert main(argv + ["--checkpoint", str(student)]) == 0
    capsys.readouterr()
    kept = {name: (out / name).read_bytes() for name in ("config.json", "result.json", "prune_report.json")}
    other = make_checkpoint(tmp_path / "other.pt", {**named_config("tiny", 64), "head_dim": 16})
    err = cli_error(capsys, *argv, "--checkpoint", other, "--resume")
    assert f"--checkpoint {other}: not the student this run pruned" in err
    err = cli_error(capsys, *[a if a != "0.3" else "0.5" for a in argv], "--checkpoint", student, "--resume")
    assert "--ratio: 0.3 != 0.5" in err
    assert {name: (out / name).read_bytes() for name in kept} == kept
    same = shutil.copy(student, tmp_path / "same.pt")  # the same student from another path resumes
    assert main(argv + ["--checkpoint", str(same), "--resume"]) == 0


def test_prune_resume_refuses_a_distill_run_before_writing_into_it(tmp_path, capsys, student):
    run = tmp_path / "distilled"
    assert main(["distill", "--teacher", "none", "--out", str(run), *SMALL]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in run.iterdir())
    err = cli_error(capsys, "prune", "--ratio", "0.3", "--checkpoint", student, "--out", run, "--resume", *SMALL)
    assert f"--resume: {run} holds a distill run's last.pt but no prune_report.json" in err
    assert sorted(p.name for p in run.iterdir()) == before


# 5. --resume over a folder of the user's own files, with no last.pt, overwrote them

def test_resume_without_last_pt_refuses_a_folder_of_a_users_files(tmp_path, capsys, student):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (mine / name).write_text('{"my": "own notes"}\n')
    for argv in (["distill", "--teacher", "none"], ["prune", "--ratio", "0.3", "--checkpoint", student]):
        err = cli_error(capsys, *argv, "--out", mine, "--resume", *SMALL)
        assert f"--resume: {mine} holds no last.pt to continue" in err and "config.json, metrics.jsonl" in err
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "metrics.jsonl"]
    assert all((mine / n).read_text() == '{"my": "own notes"}\n' for n in ("config.json", "metrics.jsonl"))


def test_resume_without_last_pt_starts_over_a_run_killed_in_its_first_epoch(tmp_path):
    """What such a run leaves is the engine's own config.json (written after the first step)."""
    killed = tmp_path / "killed"
    killed.mkdir()
    save_config(RunConfig(), killed, {"data_root": str(SAMPLE_DATA), "world_size": 1})
    assert main(["distill", "--teacher", "none", "--out", str(killed), "--resume", *SMALL]) == 0
    assert (killed / "last.pt").is_file()


# 6. prune targets were checked (if at all) only after the search

@pytest.mark.parametrize("target, says", [
    (["--target-params", "{size}"], "--target-params {size:,}: not below the student's own"),
    (["--target-params", "50000"], "--target-params 50,000: not below the student's own"),
    (["--target-params", "0"], "--target-params 0: a target must be a positive number"),
    (["--target-params", "-1"], "--target-params -1: a target must be a positive number"),
    (["--target-macs", "-1"], "--target-macs -1: a target must be a positive number"),
    (["--target-latency", "0"], "--target-latency 0: a target must be a positive number"),
    (["--target-latency", "-5"], "--target-latency -5: a target must be a positive number"),
    (["--target-latency", "nan"], "--target-latency nan: a target must be a positive number"),
    (["--target-params=-1,900", "--sweep"], "--target-params -1: a target must be a positive number"),
])
def test_every_prune_target_is_checked_before_any_work(tmp_path, capsys, monkeypatch, student, target, says):
    from facekd.challenge import count_params
    from facekd.models import load_model
    from facekd.files import load_checkpoint

    def no_search(*args, **kwargs):
        raise AssertionError("the target should have been refused before the search")
    monkeypatch.setattr(compress.train, "prune_fastest_rounding", no_search)
    size = count_params(load_model(load_checkpoint(student), student))
    out = tmp_path / "pruned"
    err = cli_error(capsys, "prune", "--checkpoint", student, *[t.format(size=size) for t in target], "--out", out)
    assert says.format(size=size) in err and not out.exists()


# 7. an int8 checkpoint as a training source read as mismatched weights, with 5 kB of key names

INT8_SOURCES = """
import sys
from facekd.app.cli import main
int8, fp32, out = sys.argv[1:4]
small = ["--set", "resolutions=[[64, 1]]"]
for argv in (["distill", "--teacher", int8], ["distill", "--teacher", fp32, "--teacher", int8],
             ["prune", "--ratio", "0.3", "--checkpoint", fp32, "--teacher", int8],
             ["prune", "--ratio", "0.3", "--checkpoint", int8], ["finetune", "--checkpoint", int8]):
    print(main(argv + small + ["--out", out]), flush=True)
"""


def test_an_int8_checkpoint_as_a_training_source_is_named_as_one(tmp_path, student):
    """In a fresh process, as a user's command starts: there nothing had registered the int8
    format, so the checkpoint was read as fp32 weights that do not match their config."""
    int8 = tmp_path / "int8.pt"
    quantize_checkpoint(student, int8, SAMPLE_DATA, n_images=4, flip_tta=False)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", INT8_SOURCES, str(int8), str(student), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.stdout.split() == ["2"] * 5, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 5 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for line in lines:
        assert f"{int8}: is a quantized checkpoint;" in line and f"its fp32 source ({student})" in line, line
    assert not (tmp_path / "out").exists()


# 8. quantize: a NaN checkpoint failed deep in torch.histc, --out newdir/i.pt after all the work

def test_quantize_refuses_non_finite_weights_up_front(tmp_path, capsys):
    model_cfg = named_config("tiny", 64)
    model = build_model(model_cfg)
    torch.nn.init.constant_(next(model.parameters()), float("nan"))
    save_checkpoint({"model": model.state_dict(), "model_cfg": model_cfg, "stage": "distill"}, tmp_path / "nan.pt")
    err = cli_error(capsys, "quantize", "--checkpoint", tmp_path / "nan.pt", "--out", tmp_path / "int8.pt")
    assert f"{tmp_path / 'nan.pt'}: 1 weight tensor(s) hold inf or NaN" in err and "cannot be quantized" in err
    assert not (tmp_path / "int8.pt").exists()


def test_quantize_writes_into_a_folder_it_makes(tmp_path, capsys, student):
    out = tmp_path / "newdir" / "deeper" / "i.pt"
    assert main(["quantize", "--checkpoint", str(student), "--out", str(out), "--calibration-images", "4",
                 "--no-tta"]) == 0, capsys.readouterr().err
    assert out.is_file()
