"""`facekd package` and `facekd check-submission`: a good zip passes, each classic mistake is named."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facekd.app.cli import main
from facekd.app.export import export
from facekd.app.submission import check_submission
from facekd.models import named_config
from tests.test_export import VAL_IMAGES, make_checkpoint


@pytest.fixture(scope="module")
def solution_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("solution")
    export(make_checkpoint(tmp / "best.pt", named_config("tiny", 64)), tmp / "solution")
    return tmp / "solution"


@pytest.fixture(scope="module")
def good_zip(tmp_path_factory, solution_dir) -> Path:
    out = tmp_path_factory.mktemp("zip") / "submission.zip"
    assert main(["package", "--images", str(VAL_IMAGES), "--solution", str(solution_dir), "--out", str(out)]) == 0
    return out


def rewrite_zip(src: Path, dst: Path, edit) -> Path:
    """Copy a zip, passing each (name, bytes) through `edit`, which returns a new pair or
    None to drop the member; the classic mistakes are small edits of a good zip."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            member = edit(name, zin.read(name))
            if member is not None:
                zout.writestr(*member)
    return dst


def _mask_as(name: str, data: bytes, mode: str = "P", size=None, fill=None) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert(mode) if mode != "P" else im.copy()
    if size:
        im = im.resize(size, Image.NEAREST)
    if fill is not None:
        im.paste(fill, (0, 0, 8, 8))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_package_writes_a_clean_zip(good_zip):
    with zipfile.ZipFile(good_zip) as zf:
        names = zf.namelist()
    assert {n.split("/")[0] for n in names} == {"masks", "solution"}
    assert sorted(n for n in names if n.startswith("masks/")) == sorted(
        f"masks/{p.stem}.png" for p in VAL_IMAGES.iterdir())
    assert {"solution/run.py", "solution/ckpt.pth", "solution/requirements.txt"} <= set(names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_good_zip_passes(good_zip, capsys):
    report = check_submission(good_zip, VAL_IMAGES)
    assert report.ok and report.masks == 4 and report.params > 0
    assert main(["check-submission", str(good_zip), "--images", str(VAL_IMAGES)]) == 0
    assert capsys.readouterr().out.startswith("OK")


def test_package_uses_the_solution_folders_own_code(tmp_path, solution_dir):
    """A doctored copy of the shipped inference module must be what runs, not facekd's."""
    doctored = tmp_path / "solution"
    export(make_checkpoint(tmp_path / "best.pt", named_config("tiny", 64)), doctored)
    inference = doctored / "facekd" / "inference.py"
    inference.write_text(inference.read_text() + "\n\ndef predict_mask(model, rgb, input_size, flip_tta=True):\n"
                         "    return np.full(rgb.shape[:2], 7, dtype=np.uint8)\n")
    out = tmp_path / "doctored.zip"
    assert main(["package", "--images", str(VAL_IMAGES), "--solution", str(doctored), "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as zf:
        for name in (n for n in zf.namelist() if n.startswith("masks/")):
            assert np.all(np.asarray(Image.open(io.BytesIO(zf.read(name)))) == 7)


def test_wrapping_folder(tmp_path, good_zip):
    bad = rewrite_zip(good_zip, tmp_path / "bad.zip", lambda n, d: (f"submission/{n}", d))
    faults = check_submission(bad, VAL_IMAGES).faults
    assert len(faults) == 1 and "wrapping folder submission/" in faults[0]  # and nothing else is wrong


def test_mode_l_masks(tmp_path, good_zip):
    bad = rewrite_zip(good_zip, tmp_path / "bad.zip",
                      lambda n, d: (n, _mask_as(n, d, "L")) if n.startswith("masks/") else (n, d))
    faults = check_submission(bad, VAL_IMAGES).faults
    assert len(faults) == 4 and all("mode 'L'" in f for f in faults)


def test_missing_ckpt(tmp_path, good_zip):
    bad = rewrite_zip(good_zip, tmp_path / "bad.zip", lambda n, d: None if n == "solution/ckpt.pth" else (n, d))
    assert check_submission(bad).faults == ["solution/ckpt.pth is missing"]


def test_missing_and_extra_masks(tmp_path, good_zip):
    first = sorted(VAL_IMAGES.iterdir())[0].stem

    def edit(n, d):
        return ("masks/stranger.png", d) if n == f"masks/{first}.png" else (n, d)

    faults = check_submission(rewrite_zip(good_zip, tmp_path / "bad.zip", edit), VAL_IMAGES).faults
    assert faults == [f"1 image(s) have no mask: {first}.png", "1 mask(s) match no image: stranger.png"]


def test_wrong_size_and_bad_ids(tmp_path, good_zip):
    with zipfile.ZipFile(good_zip) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("masks/"))

    def edit(n, d):
        if n == names[0]:
            return n, _mask_as(n, d, size=(256, 256))
        if n == names[1]:
            return n, _mask_as(n, d, fill=19)
        return n, d

    faults = check_submission(rewrite_zip(good_zip, tmp_path / "bad.zip", edit)).faults
    assert len(faults) == 2
    assert "256x256" in faults[0] and names[0] in faults[0]
    assert "id 19" in faults[1] and names[1] in faults[1]


def test_unsafe_member_names(tmp_path, good_zip):
    bad = rewrite_zip(good_zip, tmp_path / "bad.zip", lambda n, d: (n, d))
    with zipfile.ZipFile(bad, "a") as zf:
        zf.writestr("../evil.txt", b"x")
        zf.writestr("/etc/evil.txt", b"x")
    faults = check_submission(bad).faults
    assert sorted(faults) == ["../evil.txt: unsafe member name (absolute path or '..')",
                              "/etc/evil.txt: unsafe member name (absolute path or '..')"]


def test_over_limit_model(tmp_path, good_zip):
    wide = make_checkpoint(tmp_path / "wide.pt", named_config("resfpn_wide", 64))
    wide_bytes = wide.read_bytes()
    bad = rewrite_zip(good_zip, tmp_path / "bad.zip",
                      lambda n, d: (n, wide_bytes) if n == "solution/ckpt.pth" else (n, d))
    faults = check_submission(bad).faults
    assert len(faults) == 1 and "trainable parameters" in faults[0]


def test_every_fault_is_named_and_exit_is_nonzero(tmp_path, good_zip, capsys):
    def edit(n, d):
        if n == "solution/ckpt.pth":
            return None
        return f"submission/{n}", _mask_as(n, d, "L") if n.startswith("masks/") else d

    bad = rewrite_zip(good_zip, tmp_path / "bad.zip", edit)
    assert main(["check-submission", str(bad), "--images", str(VAL_IMAGES)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert sum("FAULT: " in line for line in lines) == 6  # wrapper, ckpt.pth, four mode-L masks
    assert any("wrapping folder" in line for line in lines) and any("ckpt.pth is missing" in line for line in lines)
    assert lines[-1] == f"{bad}: 6 fault(s)"


def test_not_a_zip(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    assert "not a zip archive" in check_submission(tmp_path / "x.zip").faults[0]



def test_param_limit_is_strict_at_the_boundary(good_zip, monkeypatch):
    """A model of exactly PARAM_LIMIT parameters is a fault, one of PARAM_LIMIT - 1 is not;
    the limit is moved to the shipped tiny model's own count, as no config lands on it."""
    from facekd import challenge
    n = check_submission(good_zip).params
    monkeypatch.setattr(challenge, "PARAM_LIMIT", n)
    faults = check_submission(good_zip).faults
    assert len(faults) == 1 and f"{n:,} trainable parameters" in faults[0]
    monkeypatch.setattr(challenge, "PARAM_LIMIT", n + 1)
    assert check_submission(good_zip).faults == []


# issue 28, faults 17 and 18: what unzip would turn into a link, or which copy it keeps

def test_symlink_members_are_refused(tmp_path, good_zip):
    out = tmp_path / "links.zip"
    with zipfile.ZipFile(good_zip) as zin, zipfile.ZipFile(out, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
        for name, target in (("solution/escape", "../../../../etc/passwd"), ("solution/extra.py", "run.py")):
            link = zipfile.ZipInfo(name)
            link.external_attr = (0o120777 << 16)  # S_IFLNK: unzip creates a symbolic link
            zout.writestr(link, target)
    faults = check_submission(out).faults
    assert [f for f in faults if "symbolic link" in f] == [
        "solution/escape: a symbolic link; a submission must hold plain files only",
        "solution/extra.py: a symbolic link; a submission must hold plain files only"]


def test_duplicate_member_names_are_refused(tmp_path, good_zip):
    out = tmp_path / "twice.zip"
    with zipfile.ZipFile(good_zip) as zin, zipfile.ZipFile(out, "w") as zout:
        names = zin.namelist()
        for name in names:
            zout.writestr(name, zin.read(name))
        first_mask = next(n for n in names if n.startswith("masks/"))
        with pytest.warns(UserWarning, match="Duplicate name"):
            zout.writestr(first_mask, _mask_as(first_mask, zin.read(first_mask), fill=3))
    faults = check_submission(out, VAL_IMAGES).faults
    assert faults == [f"{first_mask}: stored 2 times; every member name must be unique"]


# issue 34, faults 10 and 15: what the graders' run would fail on, and what a zip must not hold

def _replaced(name: str, data: bytes):
    """An edit for rewrite_zip that replaces one member's bytes."""
    return lambda n, d: (n, data) if n == name else (n, d)


def test_a_run_py_that_does_not_compile_is_a_fault(tmp_path, good_zip):
    with zipfile.ZipFile(good_zip) as zf:
        run_py = zf.read("solution/run.py")
    bad = rewrite_zip(good_zip, tmp_path / "bad.zip", _replaced("solution/run.py", run_py + b"\ndef broken(:\n"))
    faults = check_submission(bad).faults
    assert len(faults) == 1 and faults[0].startswith("solution/run.py: does not compile (SyntaxError"), faults
    bad = rewrite_zip(good_zip, tmp_path / "bad2.zip", _replaced("solution/facekd/files.py", b"def f(:\n"))
    assert check_submission(bad).faults == ["solution/facekd/files.py: does not compile (SyntaxError: invalid "
                                            "syntax, line 1)"]


@pytest.mark.parametrize("requirements, fault", [
    ("numpy>=1.24\npillow>=10\n", "does not list torch"),
    ("torch==1.0.0\nnumpy\npillow\n", "torch==1.0.0 admits no torch version facekd supports"),
    ("torch>=2.15\n", "torch>=2.15 admits no torch version facekd supports"),
    ("torch>=2.1\nnumpy pillow\n", "line 2, 'numpy pillow', is not a requirement pip can read"),
    ("torch>=2.1\nnot/a package\n", "line 2, 'not/a package', is not a requirement pip can read"),
])
def test_a_requirements_txt_that_would_not_install_a_working_torch_is_a_fault(tmp_path, good_zip, requirements,
                                                                              fault):
    bad = rewrite_zip(good_zip, tmp_path / "bad.zip", _replaced("solution/requirements.txt", requirements.encode()))
    faults = check_submission(bad).faults
    assert len(faults) == 1 and faults[0].startswith("solution/requirements.txt: ") and fault in faults[0], faults


@pytest.mark.parametrize("requirements", [
    "torch>=2.1\nnumpy>=1.24\npillow>=10\n",  # what export writes
    "--extra-index-url https://download.pytorch.org/whl/cpu\ntorch==2.3.0+cpu  # the CPU wheel\nnumpy\npillow\n",
    "# pinned\ntorch~=2.5.0\nnumpy<3\npillow\n",
])
def test_a_usual_requirements_txt_passes(tmp_path, good_zip, requirements):
    good = rewrite_zip(good_zip, tmp_path / "ok.zip", _replaced("solution/requirements.txt", requirements.encode()))
    assert check_submission(good).faults == []


def test_the_supported_torch_versions_are_pyprojects():
    import tomllib
    from packaging.requirements import Requirement
    from facekd.app.export import REPO_ROOT
    from facekd.app.submission import SUPPORTED_TORCH
    dependencies = map(Requirement, tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert next(d for d in dependencies if d.name == "torch").specifier == SUPPORTED_TORCH


def test_a_mask_named_in_upper_case_is_a_fault(tmp_path, good_zip):
    first = sorted(VAL_IMAGES.iterdir())[0].stem
    bad = rewrite_zip(good_zip, tmp_path / "bad.zip",
                      lambda n, d: (f"masks/{first}.PNG", d) if n == f"masks/{first}.png" else (n, d))
    faults = check_submission(bad, VAL_IMAGES).faults
    assert faults[0] == f"masks/{first}.PNG: the extension must be .png in lower case; name it {first}.png"
    assert faults[1:] == [f"1 image(s) have no mask: {first}.png"]


def test_a_partial_file_in_the_solution_is_not_packaged_and_is_a_fault(tmp_path, solution_dir):
    solution = tmp_path / "solution"
    shutil.copytree(solution_dir, solution)
    leftover = solution / ".ckpt.pth.1a2b3c4d.tmp"  # what a killed export leaves beside ckpt.pth
    leftover.write_bytes(b"half a checkpoint")
    out = tmp_path / "sub.zip"
    assert main(["package", "--images", str(VAL_IMAGES), "--solution", str(solution), "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as zf:
        assert not any(n.endswith(".tmp") for n in zf.namelist())
    with zipfile.ZipFile(out, "a") as zf:
        zf.write(leftover, "solution/.ckpt.pth.1a2b3c4d.tmp")
    assert check_submission(out).faults == ["solution/.ckpt.pth.1a2b3c4d.tmp: a partial file left by a write "
                                            "that was interrupted; remove it"]


def test_a_huge_mask_member_is_not_read_and_no_message_shows_a_buffer(tmp_path, good_zip, monkeypatch):
    """A mask that unpacks to 200 MB of zeros (a few hundred kB zipped) was read whole, and
    PIL's message named '<_io.BytesIO object at 0x...>'."""
    import facekd.app.submission as submission
    first = sorted(VAL_IMAGES.iterdir())[0].stem
    out = rewrite_zip(good_zip, tmp_path / "bad.zip", lambda n, d: None if n == f"masks/{first}.png" else (n, d))
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED) as zf, zf.open(f"masks/{first}.png", "w") as member:
        for _ in range(200):
            member.write(bytes(1 << 20))
    unpacked = {}  # member name -> bytes read from it
    real_read = zipfile.ZipExtFile.read

    def counted_read(f, n=-1):
        data = real_read(f, n)
        unpacked[f.name] = unpacked.get(f.name, 0) + len(data)
        return data
    monkeypatch.setattr(zipfile.ZipExtFile, "read", counted_read)
    faults = check_submission(out).faults
    assert faults == [f"masks/{first}.png: 209,715,200 bytes unpacked, over the 4 MB such a file could need; "
                      "not read"]
    assert unpacked[f"masks/{first}.png"] == submission.MAX_MASK_BYTES + 1
    bad = rewrite_zip(good_zip, tmp_path / "bad2.zip", _replaced(f"masks/{first}.png", bytes(1000)))
    fault, = check_submission(bad).faults
    assert fault == f"masks/{first}.png: unreadable PNG (UnidentifiedImageError: cannot identify image file)"
