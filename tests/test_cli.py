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
    assert main(["prune", "--checkpoint", "s.pt", "--ratio", "0.5", "--teacher", "gone.pt"]) == 2
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
