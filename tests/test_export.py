"""`facekd export` and the exported solution/run.py, run the way the graders run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facekd.checkpoint import save_checkpoint
from facekd.data import SAMPLE_DATA
from facekd.app.export import REPO_ROOT, REQUIREMENTS, export
from facekd.inference import list_images, load_rgb, predict_mask
from facekd.labels import NUM_CLASSES
from facekd.models import build_model, named_config
from facekd.app.predict import predict_paths
import students
from facekd.challenge import PARAM_LIMIT, count_params

VAL_IMAGES = SAMPLE_DATA / "val" / "images"


def make_checkpoint(path: Path, model_cfg: dict) -> Path:
    """A checkpoint shaped like the engine's best.pt, without spending time on training."""
    torch.manual_seed(0)
    model = build_model(model_cfg, allow_over_budget=True)
    save_checkpoint({"model": model.state_dict(), "model_cfg": model_cfg, "stage": "distill",
                     "val_fscore": 0.5, "params": count_params(model)}, path)
    return path


def facekd_cli(*args, cwd) -> subprocess.CompletedProcess:
    """`facekd ARGS` in a fresh process, importing this checkout: it starts with the model
    registries empty, as a user's command does, where the test process has filled them."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "facekd.app", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def tiny_ckpt(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "best.pt", named_config("tiny", 64))


@pytest.fixture
def solution_dir(tmp_path, tiny_ckpt) -> Path:
    """An exported folder that holds nothing but the export, like a fresh unzip."""
    out = tmp_path / "unzipped" / "solution"
    export(tiny_ckpt, out)
    return out


# facekd is installed (editable) in the dev venv, so a plain `python run.py` would quietly
# fall back to the repo's facekd if run.py failed to import its own shipped copy. To prove
# run.py needs nothing but its folder, the child runs isolated (-I: no PYTHONPATH, no cwd or
# script dir on sys.path), removes every remaining import route to facekd and students (the
# editable-install finder, any sys.path entry holding them), asserts neither is importable,
# runs run.py as __main__, and finally reports which files facekd and students came from.
_ISOLATED_RUN = r"""
import importlib, importlib.util, json, os, runpy, sys
from importlib.machinery import PathFinder
PACKAGES = ("facekd", "students")
run_py, *argv = sys.argv[1:]
sys.meta_path[:] = [f for f in sys.meta_path if f is PathFinder or not hasattr(f, "find_spec")
                    or all(f.find_spec(m, None) is None for m in PACKAGES)]
sys.path[:] = [p for p in sys.path if not any(os.path.isdir(os.path.join(p or ".", m)) for m in PACKAGES)]
importlib.invalidate_caches()
assert all(importlib.util.find_spec(m) is None for m in PACKAGES), "facekd is still importable"
sys.argv = [run_py, *argv]
try:
    runpy.run_path(run_py, run_name="__main__")
    code = 0
except SystemExit as e:
    code = e.code
print("ORIGINS " + json.dumps({m: getattr(sys.modules.get(m), "__file__", None) for m in PACKAGES}))
sys.exit(code)
"""


def run_solution(run_py: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    # -B: no __pycache__ written next to the run.py under test (e.g. the repo's solution/)
    proc = subprocess.run([sys.executable, "-I", "-B", "-c", _ISOLATED_RUN, str(run_py), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    assert "ORIGINS " in proc.stdout, proc.stderr  # run.py crashed instead of exiting with a status
    origins = json.loads(proc.stdout.rsplit("ORIGINS ", 1)[1])
    for module in origins.values():  # the solution folder's own modules, never the installed package's
        assert module is None or Path(module).resolve().is_relative_to(run_py.parent.resolve()), origins
    return proc


def test_export_writes_standalone_folder(tiny_ckpt, solution_dir):
    files = {p.relative_to(solution_dir).as_posix() for p in solution_dir.rglob("*") if p.is_file()}
    shipped_core = {f"facekd/{name}" for name in ("__init__.py", "challenge.py", "labels.py", "files.py",
                                                  "inference.py", "registry.py", "models.py")}
    assert {"run.py", "ckpt.pth", "requirements.txt", "students/__init__.py", "students/resfpn.py"} | shipped_core <= files
    assert not any(f.startswith("facekd/") and f not in shipped_core for f in files)
    assert (solution_dir / "run.py").read_text() == (REPO_ROOT / "solution" / "run.py").read_text()
    assert (solution_dir / "requirements.txt").read_text().split() == list(REQUIREMENTS)

    ckpt = torch.load(solution_dir / "ckpt.pth", weights_only=True)
    model = build_model(ckpt["model_cfg"])
    model.load_state_dict(ckpt["model"])
    assert ckpt["params"] == count_params(model) < PARAM_LIMIT
    assert ckpt["model_cfg"]["input_size"] == 64
    assert ckpt["val_fscore"] == 0.5 and ckpt["source"] == str(tiny_ckpt)
    assert {"git_commit", "facekd_version"} <= ckpt.keys()


def test_export_refuses_over_limit_student(tmp_path):
    ckpt = make_checkpoint(tmp_path / "wide.pt", named_config("resfpn_wide", 64))
    with pytest.raises(ValueError, match="trainable parameters"):
        export(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_export_refuses_teacher(tmp_path):
    ckpt = make_checkpoint(tmp_path / "teacher.pt", named_config("teacher_tiny", 64))
    with pytest.raises(ValueError, match="teacher"):
        export(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_from_a_fresh_process_refuses_a_teacher_by_name(tmp_path):
    ckpt = make_checkpoint(tmp_path / "teacher.pt", named_config("teacher_tiny", 64))
    for extra in ([], ["--format", "onnx"]):
        done = facekd_cli("export", "--checkpoint", ckpt, "--out", tmp_path / "out", *extra, cwd=tmp_path)
        assert done.returncode == 2
        assert f"{ckpt}: is a teacher (timm_fpn); only a distilled student can be shipped" in done.stderr
        assert not (tmp_path / "out").exists()


def test_export_refuses_unknown_arch(tmp_path, tiny_ckpt):
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["model_cfg"] = {**ckpt["model_cfg"], "arch": "mystery"}
    save_checkpoint(ckpt, tmp_path / "mystery.pt")
    with pytest.raises(ValueError, match="not a student arch"):
        export(tmp_path / "mystery.pt", tmp_path / "out")


def test_cli_export_error_exits_2(tmp_path, capsys):
    from facekd.app.cli import main
    assert main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "out")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_run_py_standalone_from_another_cwd(tmp_path, solution_dir):
    src = next(iter(list_images(VAL_IMAGES)))
    cwd = tmp_path / "elsewhere"
    weights = Path("..") / "unzipped" / "solution" / "ckpt.pth"  # relative to the cwd, as a user types it
    proc = run_solution(solution_dir / "run.py", "--input", src, "--output", "out/mask.png", "--weights", weights,
                        cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    mask_path = cwd / "out" / "mask.png"
    with Image.open(mask_path) as im:
        assert im.mode == "P" and im.size == (512, 512)
        ids = np.asarray(im)
        # the scorer reopens masks this way; a palette image keeps its ids through it
        assert np.array_equal(np.asarray(im.convert("P")), ids)

    assert np.array_equal(ids, predict_mask(solution_model(solution_dir), load_rgb(src), 64, flip_tta=True))
    assert ids.max() < NUM_CLASSES


def solution_model(solution_dir: Path) -> torch.nn.Module:
    """The exported student as run.py loads it, built here from facekd's own code."""
    ckpt = torch.load(solution_dir / "ckpt.pth", weights_only=True)
    model = build_model(ckpt["model_cfg"])
    model.load_state_dict(ckpt["model"])
    return model.eval().to(memory_format=torch.channels_last)


def test_run_py_default_weights_and_no_tta(tmp_path, solution_dir):
    src = next(iter(list_images(VAL_IMAGES)))
    proc = run_solution(solution_dir / "run.py", "--input", src, "--output", tmp_path / "m.png", "--no-tta",
                        cwd=tmp_path / "elsewhere")  # no --weights: the ckpt.pth next to run.py
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "m.png") as im:
        ids = np.asarray(im)
    model, rgb = solution_model(solution_dir), load_rgb(src)
    plain, tta = predict_mask(model, rgb, 64, flip_tta=False), predict_mask(model, rgb, 64, flip_tta=True)
    assert not np.array_equal(plain, tta)  # else this image could not tell whether --no-tta was obeyed
    assert np.array_equal(ids, plain)


def _odd_image(kind: str, path: Path) -> tuple[int, int]:
    with Image.open(next(iter(list_images(VAL_IMAGES)))) as im:
        im = {"gray": lambda: im.convert("L"), "rgba": lambda: im.convert("RGBA"),
              "cmyk": lambda: im.convert("CMYK"), "300x417": lambda: im.resize((300, 417))}[kind]()
        im.save(path)
        return im.size


@pytest.mark.parametrize("kind,suffix", [("gray", ".jpg"), ("rgba", ".png"), ("cmyk", ".jpg"), ("300x417", ".jpg")])
def test_run_py_odd_inputs(tmp_path, solution_dir, kind, suffix):
    src = tmp_path / f"odd{suffix}"
    size = _odd_image(kind, src)
    proc = run_solution(solution_dir / "run.py", "--input", src, "--output", tmp_path / "mask.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "mask.png") as im:
        assert im.mode == "P" and im.size == size  # PIL sizes are (width, height): 300 wide, 417 high


def test_run_py_bad_inputs_fail_cleanly(tmp_path, solution_dir):
    truncated = tmp_path / "truncated.jpg"
    data = next(iter(list_images(VAL_IMAGES))).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for src in (tmp_path / "missing.jpg", truncated):
        out = tmp_path / "out"
        proc = run_solution(solution_dir / "run.py", "--input", src, "--output", out / "mask.png", cwd=tmp_path)
        assert proc.returncode != 0
        assert len(proc.stderr.strip().splitlines()) == 1 and src.name in proc.stderr
        assert not out.exists() or not any(out.iterdir())  # no mask, no temp file


def test_run_py_matches_facekd_predict_byte_for_byte(tmp_path, solution_dir):
    predict_paths(solution_dir / "ckpt.pth", VAL_IMAGES, tmp_path / "predict", show_progress=False)
    proc = run_solution(solution_dir / "run.py", "--input", VAL_IMAGES, "--output", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in (tmp_path / "predict").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "run").iterdir()) and len(names) == 4
    for name in names:
        assert (tmp_path / "predict" / name).read_bytes() == (tmp_path / "run" / name).read_bytes(), name


def test_repo_solution_runs_from_a_fresh_clone(tmp_path):
    """The committed solution/ (refreshed only by `facekd export`) works as shipped."""
    run_py = REPO_ROOT / "solution" / "run.py"
    src = next(iter(list_images(VAL_IMAGES)))
    proc = run_solution(run_py, "--input", src, "--output", tmp_path / "mask.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mask.png").is_file()


def test_in_repo_solution_is_real_files_and_re_exports(tmp_path, tiny_ckpt, monkeypatch):
    """Exporting into the repo's own solution/ (where run.py is the canonical copy) writes
    real files, replaces stale copies and links of older exports, drops modules that no longer
    exist, keeps run.py, and the folder still runs after `cp -r` elsewhere."""
    import facekd.app.export as export_module
    repo_solution = tmp_path / "repo_solution"
    (repo_solution / "students").mkdir(parents=True)
    shutil.copy2(export_module.RUN_PY, repo_solution / "run.py")
    monkeypatch.setattr(export_module, "RUN_PY", repo_solution / "run.py")
    source = Path(students.__file__).parent.resolve() / "resfpn.py"
    (repo_solution / "students" / "resfpn.py").symlink_to(source)  # as an older export left it
    (repo_solution / "students" / "gone.py").write_text("stale\n")
    for _ in range(2):
        export_module.export(tiny_ckpt, repo_solution, force=True)  # the second replaces the first
    shipped = repo_solution / "students" / "resfpn.py"
    assert not shipped.is_symlink() and shipped.read_bytes() == source.read_bytes()
    assert not (repo_solution / "students" / "gone.py").exists()
    assert (repo_solution / "run.py").read_bytes() == (REPO_ROOT / "solution" / "run.py").read_bytes()
    copied = tmp_path / "copied"
    shutil.copytree(repo_solution, copied)  # what a user does to submit the folder by hand
    src = next(iter(list_images(VAL_IMAGES)))
    proc = run_solution(copied / "run.py", "--input", src, "--output", tmp_path / "m.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_repo_solution_matches_its_sources():
    """The committed solution/ holds real copies of the runtime sources; when a source
    changes, this fails until `facekd export --out solution` refreshes the copies."""
    from facekd.app.export import runtime_files
    solution = REPO_ROOT / "solution"
    files = runtime_files(solution)
    shipped = {p for p in solution.rglob("*.py") if "__pycache__" not in p.parts} - {solution / "run.py"}
    assert shipped == {dst for _, dst in files}, "run `facekd export --out solution`"
    for src, dst in files:
        assert not dst.is_symlink(), f"{dst} is a link; run `facekd export --out solution`"
        assert dst.read_bytes() == src.read_bytes(), f"{dst} differs from {src}; run `facekd export --out solution`"


def test_export_refresh_keeps_the_weights(tmp_path, solution_dir):
    from facekd.app.export import refresh
    weights = (solution_dir / "ckpt.pth").read_bytes()
    (solution_dir / "facekd" / "inference.py").write_text("stale\n")
    assert refresh(solution_dir)["params"] == torch.load(solution_dir / "ckpt.pth", weights_only=True)["params"]
    assert (solution_dir / "ckpt.pth").read_bytes() == weights
    assert (solution_dir / "facekd" / "inference.py").read_bytes() == (REPO_ROOT / "facekd" / "inference.py").read_bytes()


def test_export_limit_is_strict_at_the_boundary(tmp_path, tiny_ckpt, monkeypatch):
    """A student of exactly PARAM_LIMIT parameters is refused and one of PARAM_LIMIT - 1 is
    shipped. No student config lands on 1,821,085 exactly, so the limit is moved to the tiny
    student's own count instead."""
    from facekd import challenge
    assert challenge.PARAM_LIMIT == 1_821_085  # the challenge's rule: strictly fewer than this
    n = torch.load(tiny_ckpt, weights_only=True)["params"]
    monkeypatch.setattr(challenge, "PARAM_LIMIT", n)
    with pytest.raises(ValueError, match="trainable parameters"):
        export(tiny_ckpt, tmp_path / "at_limit")
    assert not (tmp_path / "at_limit").exists()
    monkeypatch.setattr(challenge, "PARAM_LIMIT", n + 1)
    assert export(tiny_ckpt, tmp_path / "one_below")["params"] == n == challenge.PARAM_LIMIT - 1


def test_export_refuses_to_replace_a_solution_unless_forced(tmp_path, tiny_ckpt, capsys):
    """Issue 34: the README's worked example exported a 3-minute model (val 0.1006) over the
    shipped solution/ckpt.pth (0.8455) without a word. An export over a folder holding a
    model is refused, naming the score it would replace, unless --force."""
    from facekd.app.cli import main
    from facekd.files import load_checkpoint
    out = tmp_path / "solution"
    export(tiny_ckpt, out)  # make_checkpoint records val 0.5
    shipped = (out / "ckpt.pth").read_bytes()
    newer = make_checkpoint(tmp_path / "newer.pt", named_config("tiny", 64))
    assert main(["export", "--checkpoint", str(newer), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"facekd export: error: {out / 'ckpt.pth'}: holds a solution already (resfpn, val F-score "
                   "0.5000); pass --force to replace it, or choose another --out"), err
    assert (out / "ckpt.pth").read_bytes() == shipped
    assert main(["export", "--checkpoint", str(newer), "--out", str(out), "--force"]) == 0
    assert load_checkpoint(out / "ckpt.pth")["source"] == str(newer)
    # a ckpt.pth that no longer loads is the user's file all the same
    (out / "ckpt.pth").write_text("my notes\n")
    with pytest.raises(FileExistsError, match="does not load as a checkpoint.*--force"):
        export(newer, out)
    assert (out / "ckpt.pth").read_text() == "my notes\n"
