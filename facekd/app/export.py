"""Turn a trained student checkpoint into a standalone solution folder.

The folder holds ckpt.pth, run.py and copies of the few modules run.py imports, so it runs
with torch, numpy and pillow alone. Copies are made here, programmatically, so the shipped
pre/post-processing is the one `facekd predict` and validation use; the repo's own solution/
is refreshed with `facekd export --out solution`, and a test fails when it has drifted.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import torch.nn as nn

import facekd
import students
from facekd import challenge
from facekd.checkpoint import load_checkpoint, save_checkpoint
from facekd.inference import check_output_folder
from facekd.app.models import is_teacher, load_model

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_PY = REPO_ROOT / "solution" / "run.py"  # canonical source of every exported run.py
FACEKD_RUNTIME = ("__init__.py", "challenge.py", "labels.py", "inference.py")  # what run.py transitively imports from facekd
# Only what run.py's imports need, with lower bounds that exist on PyPI.
REQUIREMENTS = ("torch>=2.1", "numpy>=1.24", "pillow>=10")


def shippable_student(ckpt: dict, source: str | Path) -> tuple[nn.Module, int]:
    """Rebuild the checkpoint's model and refuse anything the challenge would reject.

    An over-limit student is rebuilt so that it is reported with its exact count, and its
    weights are loaded strictly so a config that does not match them fails here, not in run.py.
    """
    cfg = ckpt["model_cfg"]
    arch = cfg.get("arch")
    if is_teacher(cfg):
        raise ValueError(f"{source}: is a teacher ({arch}); only a distilled student can be shipped")
    if ckpt.get("quantized"):
        raise ValueError(f"{source}: is an int8 checkpoint; run.py ships fp32 students, so export its fp32 "
                         f"source ({ckpt.get('source')})")
    if arch not in students.ARCHS:
        raise ValueError(f"{source}: arch {arch!r} is not a student arch ({sorted(students.ARCHS)})")
    if "input_size" not in cfg:
        raise ValueError(f"{source}: model_cfg has no input_size, which run.py needs")
    model, _ = load_model(ckpt, source=source)
    broken = [name for name, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
    if broken:
        raise ValueError(f"{source}: {len(broken)} weight tensor(s) hold inf or NaN (e.g. {broken[0]}); "
                         "its training diverged, so it cannot be shipped")
    n = challenge.count_params(model)
    if n >= challenge.PARAM_LIMIT:
        raise ValueError(f"{source}: {arch} has {n:,} trainable parameters; the challenge needs fewer than "
                         f"{challenge.PARAM_LIMIT:,} (prune it first)")
    return model, n


def git_commit() -> str | None:
    """The repo's HEAD, so a shipped model can be traced back to its code; None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:  # e.g. not a repository, or no commit yet
        return None
    return out.stdout.strip() or None


def runtime_files(out: Path) -> list[tuple[Path, Path]]:
    """(source, destination) for run.py and the modules it imports. run.py is left out when
    `out` is the repo's solution/ folder, which is where the canonical copy lives."""
    files = [] if out.resolve() == RUN_PY.parent.resolve() else [(RUN_PY, out / "run.py")]
    facekd_dir = Path(facekd.__file__).resolve().parent
    files += [(facekd_dir / name, out / "facekd" / name) for name in FACEKD_RUNTIME]
    files += [(src, out / "students" / src.name)
              for src in sorted(Path(students.__file__).resolve().parent.glob("*.py"))]
    return files


def copy_runtime(out: Path) -> None:
    """Real copies, never links, in every folder including the repo's own solution/: the
    folder is copied or zipped by hand to be submitted, and must run wherever it lands."""
    files = runtime_files(out)
    # e.g. --out at the repo root: refuse before copying anything, not halfway through
    clashes = [str(dst) for src, dst in files
               if dst.exists() and not dst.is_symlink() and dst.resolve() == src.resolve()]
    if clashes:
        raise ValueError(f"{out}: export would overwrite its own source files (e.g. {clashes[0]}); "
                         "choose another --out")
    for src, dst in files:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)  # a link (from an older export) would be written through, into its source
        shutil.copy2(src, dst)
    # a module since removed or renamed in the sources must not linger in the shipped copy
    shipped = {dst for _, dst in files}
    for stale in [*out.glob("facekd/*.py"), *out.glob("students/*.py")]:
        if stale not in shipped:
            stale.unlink()
    (out / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")


def refresh(out: str | Path) -> dict:
    """Rewrite an existing export's code from the current sources, keeping its ckpt.pth;
    the weights are first checked to still fit that code. Returns the ckpt.pth's metadata."""
    out = Path(out)
    ckpt = load_checkpoint(out / "ckpt.pth")
    shippable_student(ckpt, out / "ckpt.pth")
    copy_runtime(out)
    return {k: v for k, v in ckpt.items() if k != "model"}


def export(checkpoint: str | Path, out: str | Path) -> dict:
    """Write a runnable solution folder; returns the metadata stored in its ckpt.pth.

    Everything is checked before anything is written, and the weights are written last,
    so a refused or failed export never leaves a ckpt.pth that looks complete.
    """
    if not RUN_PY.is_file():
        raise FileNotFoundError(f"{RUN_PY}: canonical run.py not found (export needs the facekd source tree)")
    checkpoint, out = Path(checkpoint), Path(out)
    check_output_folder(out)
    ckpt = load_checkpoint(checkpoint)
    model, n_params = shippable_student(ckpt, checkpoint)
    val = ckpt.get("val_fscore")
    meta = {"model_cfg": dict(ckpt["model_cfg"]), "params": n_params,
            "val_fscore": None if val is None else float(val), "source": str(checkpoint),
            "git_commit": git_commit(), "facekd_version": facekd.__version__}
    copy_runtime(out)
    save_checkpoint({"model": model.state_dict(), **meta}, out / "ckpt.pth")
    return meta
