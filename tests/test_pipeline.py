import json
import zipfile

import pytest

from facekd.app.cli import main
from facekd.app.pipeline import _tail_seconds, finetune_under_teacher
from facekd.app.submission import check_submission
from facekd.challenge import PARAM_LIMIT
from facekd.latency import RUNS, WARMUP


def test_pipeline_smoke_end_to_end_and_resume(tmp_path, sample_root, capsys):
    out = tmp_path / "pipe"
    assert main(["pipeline", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["audit", "teacher", "distill", "prune", "solution", "package", "report"]
    # the sample's one mirrored mask was fixed, and training read the fixed copy
    assert summary["stages"]["audit"]["mirrored"] == 1
    assert json.loads((out / "teacher" / "config.json").read_text())["data_root"] == str(out / "audit" / "data")
    for name in ("teacher", "distill", "prune"):
        record = summary["stages"][name]
        assert {"val_fscore", "params", "macs", "latency_ms", "wall_s"} <= set(record), name
        assert (out / name / "best.pt").is_file()
    assert summary["stages"]["prune"]["params"] <= summary["stages"]["prune"]["target_params"]
    assert summary["stages"]["solution"]["params"] < 1_821_085
    report = check_submission(out / "submission.zip", sample_root / "val" / "images")
    assert report.ok, report.faults
    with zipfile.ZipFile(out / "submission.zip") as zf:
        assert {n.split("/")[0] for n in zf.namelist()} == {"masks", "solution"}
    assert (out / "report" / "index.html").is_file()

    # a second run on the same folder is refused without --resume and a no-op with it
    assert main(["pipeline", "--out", str(out)]) == 2
    capsys.readouterr()
    assert main(["pipeline", "--out", str(out), "--resume"]) == 0
    assert "done earlier, skipped" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["stages"]["teacher"] == summary["stages"]["teacher"]


def test_pipeline_prunes_a_wide_student_to_just_under_the_limit(tmp_path, capsys):
    out = tmp_path / "wide"
    args = ["pipeline", "--out", str(out), "--no-audit", "--set", "resolutions=[[64, 2]]"]
    assert main(args + ["--prune-from", "wide"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    student, pruned = summary["stages"]["distill"], summary["stages"]["prune"]
    assert student["params"] > PARAM_LIMIT  # the wide one trains over the limit ...
    assert pruned["target_params"] == PARAM_LIMIT - 1
    # ... and is cut under it; every layer loses the same share in multiples of 8 channels, so
    # the last step lands well short of the limit (0.89 of it for resfpn_wide)
    assert 0.85 * PARAM_LIMIT < pruned["params"] < PARAM_LIMIT
    assert summary["stages"]["solution"]["from"] == "prune"  # the only one it may ship
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2  # resumed with the other path
    assert "--prune-from wide" in capsys.readouterr().err


def test_pipeline_distils_from_a_teacher_trained_earlier(tmp_path, capsys):
    teacher_run = tmp_path / "teacher"
    assert main(["train-teacher", "--out", str(teacher_run), "--set", "resolutions=[[64, 1]]"]) == 0
    teacher = teacher_run / "best.pt"
    out = tmp_path / "pipe"
    args = ["pipeline", "--out", str(out), "--no-audit", "--set", "resolutions=[[64, 1]]", "--seed", "3"]
    assert main(args + ["--teacher", str(teacher), "--finetune-kd", "never"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for stage in ("distill", "prune"):  # --seed reaches every stage it runs
        assert json.loads((out / stage / "config.json").read_text())["seed"] == 3
    assert not (out / "teacher").exists()  # nothing trained for it
    assert summary["stages"]["teacher"]["from"] == str(teacher)
    recorded = json.loads((teacher_run / "result.json").read_text())["val_fscore"]
    assert summary["stages"]["teacher"]["val_fscore"] == recorded
    # the student distils from it; with --finetune-kd never the pruned one fine-tunes from labels alone
    assert json.loads((out / "distill" / "config.json").read_text())["teacher"] == str(teacher)
    assert json.loads((out / "prune" / "config.json").read_text())["teacher"] == "none"
    assert summary["stages"]["prune"]["finetune_kd"] is False

    capsys.readouterr()
    assert main(args + ["--resume", "--finetune-kd", "never"]) == 2  # resumed as if it had trained its own teacher
    assert f"--teacher {teacher}" in capsys.readouterr().err
    assert main(args + ["--resume", "--teacher", str(teacher)]) == 2  # resumed with the default policy
    assert "--finetune-kd never" in capsys.readouterr().err
    assert main(args[:2] + [str(tmp_path / "other"), "--teacher", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such checkpoint" in capsys.readouterr().err


def test_pipeline_with_teacher_none_trains_from_labels_alone(tmp_path, capsys):
    """Issue 26: --teacher none means labels alone on the pipeline too; it once trained a
    teacher all the same. 'train', the flag's default there, names the teacher stage's own."""
    out = tmp_path / "pipe"
    args = ["pipeline", "--out", str(out), "--no-audit", "--set", "resolutions=[[64, 1]]"]
    assert main(args + ["--teacher", "none", "--finetune-kd", "always"]) == 2  # nothing to fine-tune under
    assert "--finetune-kd always needs a teacher" in capsys.readouterr().err and not out.exists()
    assert main(args + ["--teacher", "train", "--teacher", "t.pt"]) == 2
    assert main(args + ["--teacher", "none"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert not (out / "teacher").exists()
    assert summary["stages"]["teacher"]["from"] == "none" and summary["teacher_from"] == "none"
    for stage in ("distill", "prune"):
        assert json.loads((out / stage / "config.json").read_text())["teacher"] == "none"
    assert summary["stages"]["prune"]["finetune_kd"] is False
    assert (out / "solution" / "ckpt.pth").is_file()


def test_budget_tail_prices_the_teacher_the_report_scores(sample_root):
    # the report scores a teacher the pipeline trained; a slow one must be paid for before the
    # last training stage is planned, or the pipeline ends past its budget
    stages = {"distill": {"latency_ms": 10.0}, "teacher": {"latency_ms": 200.0}}
    images = sample_root / "val" / "images"
    n_val = len(list((sample_root / "val" / "masks").glob("*.png")))
    own = _tail_seconds(images, sample_root, stages, report_scores_teacher=True)
    reused = _tail_seconds(images, sample_root, stages, report_scores_teacher=False)
    assert n_val > 0
    # scoring it on val, and timing it beside the other models (a warm-up and RUNS passes)
    assert own - reused == pytest.approx(n_val * (2 * 0.200 + 0.03) + (WARMUP + RUNS) * 0.200)


def test_finetune_kd_auto_keeps_the_teacher_only_while_it_scores_above_the_student():
    assert finetune_under_teacher("auto", teacher_fscore=0.83, student_fscore=0.82)
    assert not finetune_under_teacher("auto", teacher_fscore=0.818, student_fscore=0.8205)
    assert not finetune_under_teacher("auto", teacher_fscore=0.82, student_fscore=0.82)  # a tie is no reason to pay
    assert finetune_under_teacher("auto", teacher_fscore=None, student_fscore=0.82)  # unscored: keep it
    assert finetune_under_teacher("always", 0.5, 0.9) and not finetune_under_teacher("never", 0.9, 0.5)
    with pytest.raises(ValueError, match="--finetune-kd must be one of"):
        finetune_under_teacher("sometimes", 0.9, 0.5)
