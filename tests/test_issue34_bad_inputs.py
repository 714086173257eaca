"""Issue 34, faults 9 to 15 of the third bad-input battery: each input is refused or named
in one line, or handled as the user meant it. (The report page's faults are in
tests/test_report.py, check-submission's and package's in tests/test_submission.py.)"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facekd.app.cli import main
from facekd.app.export import REPO_ROOT, export
from facekd.data import SAMPLE_DATA
from facekd.inference import load_rgb
from facekd.models import named_config
from tests.test_export import VAL_IMAGES, make_checkpoint

RUN_PY = REPO_ROOT / "solution" / "run.py"
SMALL = ["--set", "resolutions=[[64, 1]]"]


def one_line_error(capsys, *argv) -> str:
    """A user error from the CLI: exit status 2, one line on stderr, no traceback."""
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    lines = err.split("\r")[-1].strip().splitlines()  # a progress bar that cleared itself is not a line
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def student(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "student.pt", named_config("tiny", 64))


# 13. a checkpoint cut short is called truncated, by every command that reads one

def _truncated(path: Path) -> Path:
    """`truncate -s 30000`, or half the file for one smaller than that."""
    data = path.read_bytes()
    path.write_bytes(data[:min(30000, len(data) // 2)])
    return path


@pytest.mark.parametrize("command", ["resume", "export", "quantize", "prune", "report", "predict"])
def test_a_truncated_checkpoint_is_called_truncated(tmp_path, capsys, student, command):
    bad = _truncated(student)
    out = tmp_path / "out"
    argv = {
        "export": ["export", "--checkpoint", bad, "--out", out],
        "quantize": ["quantize", "--checkpoint", bad, "--out", tmp_path / "int8.pt"],
        "prune": ["prune", "--checkpoint", bad, "--ratio", "0.3", "--out", out, *SMALL],
        "report": ["report", bad, "--out", out, "--data", SAMPLE_DATA],
        "predict": ["predict", "--checkpoint", bad, "--images", next(VAL_IMAGES.glob("*.jpg")), "--out", out],
    }
    if command == "resume":
        out.mkdir()
        bad.rename(out / "last.pt")
        bad = out / "last.pt"
        argv["resume"] = ["distill", "--teacher", "none", "--resume", "--out", out, *SMALL]
    err = one_line_error(capsys, *argv[command])
    assert f"{bad}: truncated or damaged" in err
    assert "not a PyTorch checkpoint" not in err
