"""Issue 28, "Friction in a first run": the command line a new user meets. Every option has a
help text, one naming scheme with the old spellings kept, --help and argument errors that
answer before torch is imported, and a pipeline that ends in a few plain lines."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile

import pytest

from facekd.app.cli import build_parser, main
from facekd.app.export import REPO_ROOT
from facekd.app.submission import check_submission


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_command_has_help():
    """Friction 5: --preset, --seed, package --out, check-submission's zip, predict --weights,
    evaluate --pred/--gt/--json and audit --split had none."""
    for name, parser in subcommands().items():
        for action in parser._actions:
            assert action.help, f"facekd {name} {action.option_strings or action.dest}: no help text"
    preset = next(a for a in subcommands()["distill"]._actions if a.dest == "preset")
    assert "default: smoke" in preset.help


@pytest.mark.parametrize("old, new", [
    (["predict", "--weights", "a.pt", "--input", "imgs", "--output", "preds"],
     ["predict", "--checkpoint", "a.pt", "--images", "imgs", "--out", "preds"]),
    (["prune", "--student", "s.pt", "--ratio", "0.5"], ["prune", "--checkpoint", "s.pt", "--ratio", "0.5"]),
    (["finetune", "--student", "s.pt"], ["finetune", "--checkpoint", "s.pt"]),
    (["distill", "--student", "tiny"], ["distill", "--arch", "tiny"])])
def test_one_option_scheme_with_the_old_spellings_kept(old, new):
    """Friction 4: predict took --weights/--input/--output where export took --checkpoint/--out,
    and --student was an architecture in distill but a checkpoint in prune and finetune."""
    parser = build_parser()
    assert vars(parser.parse_args(old)) == vars(parser.parse_args(new))


def test_check_submission_takes_the_zip_as_an_option_too(tmp_path, capsys):
    assert main(["check-submission", "--zip", str(tmp_path / "none.zip")]) == 2
    assert "none.zip: no such file" in capsys.readouterr().err


def test_the_teacher_flag_has_one_meaning_and_one_default(tmp_path, capsys, monkeypatch):
    """Friction 3 and issue 26: distill defaulted to runs/teacher/best.pt ("checkpoint not found"
    on a fresh clone), prune and finetune to none. Now --teacher left out means labels alone
    on every training command, and the pipeline's own teacher in the pipeline; --help says so."""
    parser = build_parser()
    for name in ("distill", "prune", "finetune"):
        teacher = next(a for a in subcommands()[name]._actions if a.dest == "teacher")
        assert "(default: none, labels alone)" in teacher.help and "'none'" in teacher.help, name
    pipeline = next(a for a in subcommands()["pipeline"]._actions if a.dest == "teacher")
    assert "(default: 'train', the pipeline's teacher stage trains one" in pipeline.help
    assert parser.parse_args(["distill"]).teacher is None
    from facekd.checkpoint import save_checkpoint
    from facekd.models import build_model, named_config
    student = tmp_path / "s.pt"
    save_checkpoint({"model": build_model(named_config("tiny", 64)).state_dict(),
                     "model_cfg": named_config("tiny", 64)}, student)
    assert main(["prune", "--checkpoint", str(student), "--ratio", "0.5", "--teacher", "gone.pt"]) == 2
    assert "--teacher gone.pt: no such checkpoint" in capsys.readouterr().err


# Friction 6: what --help and an argument error must not wait for
NO_TORCH = """
import sys
from facekd.app.cli import main
for argv in (["--help"], ["distill", "--help"], ["distill", "--bogus"], ["prune"]):
    try:
        main(argv)
    except SystemExit:
        pass
print("torch imported" if "torch" in sys.modules else "no torch")
"""


def test_help_and_argument_errors_do_not_import_torch():
    """torch takes seconds to import; --help and argument errors answer before it
    (benchmarks/bench_startup.py --cli measures the time)."""
    proc = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO_ROOT), "PATH": ""})
    assert proc.stdout.strip().splitlines()[-1] == "no torch", proc.stdout + proc.stderr


def test_pipeline_ends_in_a_few_plain_lines(tmp_path, capsys, monkeypatch):
    """Friction 2 and 9: about 115 lines of JSON, nothing saying where the solution, zip and
    report went or that the sample's score means nothing; JSON stays behind --json."""
    import facekd.app.pipeline as pipeline
    from facekd.budget import BudgetError

    def no_time(self):
        raise BudgetError("a budget of 0.06 min is too small for this run")
    monkeypatch.setattr(pipeline.Pipeline, "prune", no_time)
    out = tmp_path / "pipe"
    assert main(["pipeline", "--no-audit", "--out", str(out), "--set", "resolutions=[[64, 1]]"]) == 0
    printed = capsys.readouterr().out.split("made in ")[-1].splitlines()
    assert printed[0] == f"{out}/:" and len(printed) <= 12, printed
    text = "\n".join(printed)
    for expected in ("solution/", "submission.zip", "report/index.html", "shipped val F-score",
                     "this score means nothing", "next: ",
                     "skipped the prune stage: a budget of 0.06 min is too small"):
        assert expected in text, (expected, text)
    assert main(["pipeline", "--no-audit", "--out", str(out), "--resume", "--json",
                 "--set", "resolutions=[[64, 1]]"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):]) == json.loads((out / "summary.json").read_text())


def test_check_submission_cuts_the_list_of_missing_masks(tmp_path, capsys):
    """Friction 10: every missing mask's name on one line, 3.7 kB for 95 names."""
    from PIL import Image
    images = tmp_path / "images"
    images.mkdir()
    for i in range(40):
        Image.new("RGB", (8, 8)).save(images / f"image_{i:03d}.jpg")
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        zf.writestr("masks/other.png", b"")
    faults = check_submission(tmp_path / "s.zip", images).faults
    missing = next(f for f in faults if "have no mask" in f)
    assert missing.startswith("40 image(s) have no mask: image_000.png, ") and "(35 more)" in missing
    assert len(missing) < 200


@pytest.mark.parametrize("module", ["facekd", "facekd.app"])
def test_python_dash_m_runs_the_command(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO_ROOT), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert "usage: facekd" in proc.stdout and "train-teacher" in proc.stdout and "grow" in proc.stdout


def test_the_default_preset_follows_the_data(tmp_path, sample_root, data_copy, monkeypatch, capsys):
    """Issue 34: `facekd distill --data data/celebamask-mini --budget 1` trained the smoke preset's
    18,707-parameter toy at 128 px, without a word. Left out, --preset is smoke for the embedded
    sample and cpu for a dataset of the user's, and the command says which it took."""
    import distill.train
    import facekd.app.pipeline
    trained = []
    monkeypatch.setattr(distill.train, "train_student", lambda cfg, *a, **k: trained.append(cfg.model) or {})
    monkeypatch.setattr(facekd.app.pipeline, "run_pipeline", lambda root, out, preset, *a, **k: trained.append(preset))
    distill_cmd = ["distill", "--teacher", "none", "--out", str(tmp_path / "r")]
    assert main(distill_cmd) == 0 and main(distill_cmd + ["--data", str(sample_root)]) == 0
    assert capsys.readouterr().err == ""
    assert main(distill_cmd + ["--data", str(data_copy)]) == 0
    assert capsys.readouterr().err.strip() == (
        f"facekd distill: --preset cpu, the default for --data {data_copy} (smoke is sized for the embedded "
        "sample and the tests; gpu is for a GPU)")
    assert main(distill_cmd + ["--data", str(data_copy), "--preset", "smoke"]) == 0  # a preset given is kept
    assert main(["pipeline", "--data", str(data_copy), "--json"]) == 0
    assert main(["pipeline", "--json"]) == 0
    assert trained == ["tiny", "tiny", "resfpn", "tiny", "cpu", "smoke"]


def test_a_wrong_pipeline_data_is_named_as_data(tmp_path, capsys):
    """Issue 34: `pipeline --data wrong/path` answered `--images wrong/path/val/images: not a
    folder of images`, naming a flag the user never gave."""
    out = tmp_path / "p"
    assert main(["pipeline", "--data", str(tmp_path / "wrong"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"facekd pipeline: error: --data {tmp_path / 'wrong'}: no such folder"
    (tmp_path / "bare" / "val").mkdir(parents=True)
    assert main(["pipeline", "--data", str(tmp_path / "bare"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"facekd pipeline: error: --data {tmp_path / 'bare'}: no images to package in test/images or val/images; "
        "give --images")
    assert not out.exists()


def test_a_teacher_run_folder_stands_for_its_best_pt(tmp_path, capsys):
    """Issue 34: `--teacher runs/teacher` (a run folder) said "no such checkpoint"."""
    from facekd.checkpoint import save_checkpoint
    from facekd.models import build_model, named_config
    cfg = named_config("teacher_tiny", 64)
    (tmp_path / "teacher").mkdir()
    save_checkpoint({"model": build_model(cfg).state_dict(), "model_cfg": cfg}, tmp_path / "teacher" / "best.pt")
    run = tmp_path / "run"
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "--out", str(run),
                 "--set", "resolutions=[[64, 1]]"]) == 0
    assert json.loads((run / "config.json").read_text())["teacher"] == str(tmp_path / "teacher" / "best.pt")
    (tmp_path / "unfinished").mkdir()
    capsys.readouterr()
    assert main(["distill", "--teacher", str(tmp_path / "unfinished"), "--out", str(tmp_path / "r2")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"facekd distill: error: --teacher {tmp_path / 'unfinished'}: a folder without best.pt; give a checkpoint, "
        "or the folder of a run that has validated at least once")


@pytest.mark.parametrize("command, default", [("prune", "runs/distill/best.pt"), ("finetune", "runs/prune/best.pt")])
def test_a_missing_student_checkpoint_names_the_flag(tmp_path, capsys, monkeypatch, command, default):
    """Issue 34: prune and finetune without --checkpoint said "runs/distill/best.pt: checkpoint
    not found", naming no flag to change."""
    monkeypatch.chdir(tmp_path)
    target = ["--ratio", "0.3"] if command == "prune" else []
    assert main([command, *target]) == 2
    assert capsys.readouterr().err.strip() == (
        f"facekd {command}: error: --checkpoint left out, and its default {default} (an earlier stage's output) is "
        "not there; give --checkpoint a student's best.pt or its run folder")
    assert main([command, *target, "--checkpoint", "nope.pt"]) == 2
    assert capsys.readouterr().err.strip() == f"facekd {command}: error: --checkpoint nope.pt: checkpoint not found"
    assert not (tmp_path / "runs").exists()
