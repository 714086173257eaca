"""Issue 34, faults 9 to 15 of the third bad-input battery: each input is refused or named
in one line, or handled as the user meant it. (The report page's faults are in
tests/test_report.py, check-submission's and package's in tests/test_submission.py.)"""

from __future__ import annotations

import builtins
import errno
import io
import os
import subprocess
import sys
import threading
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


def last_line_error(capsys, *argv) -> str:
    """A user error met once training's nested progress bars had started (tqdm leaves the outer
    one standing): exit status 2, no traceback, and the error is the last line."""
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("facekd "), err
    return err.strip().splitlines()[-1]


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


# 11. a full disk: the file that could not be written is named, and no thread prints a traceback

class _NoSpaceLeft:
    """A file object whose writes fail as they do on a full disk."""

    def __init__(self, f):
        self._file = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(part): from now on, a file opened for writing whose name holds `part` fails
    its writes with ENOSPC. Returns the uncaught exceptions of other threads, as a list."""
    real_open = builtins.open

    def opened(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        writes = any(c in mode for c in "wax+")
        return _NoSpaceLeft(f) if writes and monkeypatch.part in Path(str(file)).name else f

    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)

    def fill(part: str) -> list:
        monkeypatch.part = part
        monkeypatch.setattr(builtins, "open", opened)
        monkeypatch.setattr(io, "open", opened)
        return thread_errors
    return fill


@pytest.mark.parametrize("part", ["events.out.tfevents", "config.json", "metrics.jsonl", "last.pt", "best.pt"])
def test_distill_on_a_full_disk_names_the_file(tmp_path, capsys, full_disk, part):
    thread_errors = full_disk(part)
    out = tmp_path / "run"
    err = last_line_error(capsys, "distill", "--teacher", "none", "--out", out, *SMALL)
    assert f"{out}/{part}" in err and err.endswith("could not be written (No space left on device)"), err
    assert not thread_errors  # TensorBoard's writer thread printed its traceback


def test_export_quantize_and_package_on_a_full_disk_name_the_file(tmp_path, capsys, full_disk, student):
    export(student, tmp_path / "solution")
    for part, argv in [("ckpt.pth", ["export", "--checkpoint", student, "--out", tmp_path / "s1"]),
                       ("requirements.txt", ["export", "--checkpoint", student, "--out", tmp_path / "s2"]),
                       ("int8.pt", ["quantize", "--checkpoint", student, "--out", tmp_path / "int8.pt",
                                    "--calibration-images", "2", "--no-tta"]),
                       (".sub.zip.", ["package", "--images", VAL_IMAGES, "--solution", tmp_path / "solution",
                                      "--out", tmp_path / "sub.zip", "--no-tta"])]:
        full_disk(part)
        # package's bar over the predicted masks has finished when the zip is written
        err = (last_line_error if part == ".sub.zip." else one_line_error)(capsys, *argv)
        written = {"ckpt.pth": tmp_path / "s1" / "ckpt.pth", "requirements.txt": tmp_path / "s2" / "requirements.txt",
                   "int8.pt": tmp_path / "int8.pt", ".sub.zip.": tmp_path / "sub.zip"}[part]
        assert f"{written}: could not be written (No space left on device)" in err, err


# 12. settings that do nothing without a teacher are named; one teacher twice is refused

@pytest.fixture
def no_training(monkeypatch):
    """distill, prune and finetune do no work: the tests below read what the CLI says first."""
    import compress.train
    import distill.train
    for module, name in ((distill.train, "train_student"), (compress.train, "prune_and_finetune"),
                         (compress.train, "finetune")):
        monkeypatch.setattr(module, name, lambda *args, **kwargs: {"report": {}})


def test_settings_that_need_a_teacher_are_named_when_there_is_none(tmp_path, capsys, no_training):
    (tmp_path / "kd.toml").write_text("cwd_weight = 3.0\ntemperature = 2.0\n")
    argv = ["--out", tmp_path / "run", "--set", "kd_weight=2", "--set", "dist_weight=0.5", "--set",
            "distill_mode=offline", "--set", f"soft_target_cache={tmp_path / 'cache'}", "--config", tmp_path / "kd.toml"]
    student = make_checkpoint(tmp_path / "student.pt", named_config("tiny", 64))
    for command in (["distill", "--teacher", "none"], ["prune", "--ratio", "0.3", "--json", "--checkpoint", student],
                    ["finetune", "--checkpoint", student]):
        assert main(list(map(str, command + argv))) == 0
        err = capsys.readouterr().err
        assert err.startswith(f"facekd {command[0]}: warning: kd_weight=2, cwd_weight=3, dist_weight=0.5, "
                              f"temperature=2.0, distill_mode='offline', soft_target_cache="), err
        assert "do nothing without a teacher" in err and len(err.strip().splitlines()) == 1
    # the same settings with a teacher, and a preset's own teacher losses without one, say nothing
    teacher = make_checkpoint(tmp_path / "teacher.pt", named_config("teacher_tiny", 64))
    assert main(list(map(str, ["distill", "--teacher", teacher] + argv))) == 0
    assert main(["distill", "--teacher", "none", "--out", str(tmp_path / "plain")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_one_teacher_given_twice_is_refused(tmp_path, capsys):
    teacher = make_checkpoint(tmp_path / "teacher.pt", named_config("teacher_tiny", 64))
    (tmp_path / "copy.pt").write_bytes(teacher.read_bytes())
    other = tmp_path / "other"
    other.mkdir()
    out = tmp_path / "run"
    for second, why in [(teacher, "the same file as"), (other / ".." / "teacher.pt", "the same file as"),
                        (tmp_path / "copy.pt", "a copy of")]:
        err = one_line_error(capsys, "distill", "--teacher", teacher, "--teacher", second, "--out", out, *SMALL)
        assert f"--teacher {second}: {why} --teacher {teacher}" in err, err
        assert not out.exists()
    # two teachers of one architecture, files of one size but not the same bytes, are an ensemble
    from distill.teacher import refuse_repeated_members
    first = make_checkpoint(tmp_path / "a.pt", named_config("teacher_tiny", 64))
    second = make_checkpoint(tmp_path / "b.pt", named_config("teacher_tiny", 96))
    assert first.stat().st_size == second.stat().st_size
    refuse_repeated_members([str(first), str(second)])


# 15. smaller faults

def test_distill_refuses_a_teacher_as_the_student(tmp_path, capsys):
    out = tmp_path / "run"
    err = one_line_error(capsys, "distill", "--teacher", "none", "--arch", "teacher_tiny", "--out", out, *SMALL)
    assert "--arch teacher_tiny: is a teacher; distill trains a student" in err
    assert not out.exists()


def test_a_broken_onnx_import_shows_its_own_error(monkeypatch):
    from facekd.app.onnx_export import require_onnx
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "onnxruntime":  # installed, but its native library cannot load
            raise ImportError("libonnxruntime.so.1: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(ValueError) as e:
        require_onnx()
    assert "libonnxruntime.so.1: cannot open shared object file" in str(e.value)
    assert "None" not in str(e.value) and "not installed" not in str(e.value)


def test_training_images_without_masks_are_reported(data_copy, capsys):
    from facekd.data import load_split
    unmasked = sorted((data_copy / "train" / "masks").glob("*.png"))[:3]
    for mask in unmasked:
        mask.unlink()
    for size in (64, 96):  # a second resolution does not say it again
        assert len(load_split(data_copy, "train", size, show_progress=False)) == 13
    err = capsys.readouterr().err
    assert err.count("warning") == 1, err
    assert f"{data_copy / 'train' / 'images'}: 3 of 16 images have no mask" in err
    assert all(f"{mask.stem}.jpg" in err for mask in unmasked)


def test_two_images_of_one_stem_are_refused(data_copy):
    from facekd.data import DataError, load_split
    image = sorted((data_copy / "train" / "images").glob("*.jpg"))[0]
    (image.parent / f"{image.stem}.JPG").write_bytes(image.read_bytes())
    with pytest.raises(DataError) as e:
        load_split(data_copy, "train", 64, show_progress=False)
    assert str(e.value).startswith(f"{image.parent}: {image.stem}.JPG and {image.stem}.jpg share one stem")


def test_an_undecodable_toml_names_its_file(tmp_path, capsys):
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfelr = 1\n")
    err = one_line_error(capsys, "distill", "--teacher", "none", "--config", tmp_path / "bad.toml",
                         "--out", tmp_path / "run")
    assert f"{tmp_path / 'bad.toml'}: not a TOML file" in err
