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


# 9. run.py and every command read an image as it is displayed: its EXIF orientation applied

def _portrait_stored_sideways(tmp_path: Path) -> tuple[Path, Path]:
    """(upright.png, sideways.png): a 512x384 crop of a sample face, and the same pixels stored
    turned a quarter left with EXIF orientation 6 ("turn right to display"), as a phone
    stores a portrait. PNG keeps the pixels exact, so the two must give the same mask."""
    upright = Image.open(next(VAL_IMAGES.glob("*.jpg"))).convert("RGB").crop((0, 64, 512, 448))
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png", exif=exif)
    return tmp_path / "upright.png", tmp_path / "sideways.png"


def test_an_image_is_read_in_its_displayed_orientation(tmp_path):
    upright, sideways = _portrait_stored_sideways(tmp_path)
    assert Image.open(sideways).size == (384, 512)  # as stored
    assert np.array_equal(load_rgb(sideways), load_rgb(upright))


def test_run_py_writes_the_mask_of_a_sideways_stored_portrait_upright(tmp_path):
    upright, sideways = _portrait_stored_sideways(tmp_path)
    solution = tmp_path / "solution"
    export(make_checkpoint(tmp_path / "best.pt", named_config("tiny", 64)), solution)
    masks = {}
    for image in (upright, sideways):
        out = tmp_path / f"{image.stem}_mask.png"
        done = subprocess.run([sys.executable, "-I", str(solution / "run.py"), "--input", str(image),
                               "--output", str(out)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        masks[image.stem] = np.asarray(Image.open(out))
    assert masks["sideways"].shape == (384, 512)  # the displayed height and width
    assert np.array_equal(masks["sideways"], masks["upright"])


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
