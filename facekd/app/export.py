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

import facekd
import students
from facekd.checkpoint import save_checkpoint
from facekd.files import check_output_folder, load_checkpoint, naming_failed_writes
from facekd.models import shippable_student

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_PY = REPO_ROOT / "solution" / "run.py"  # canonical source of every exported run.py
# what run.py transitively imports from facekd
FACEKD_RUNTIME = ("__init__.py", "challenge.py", "labels.py", "files.py", "inference.py", "registry.py",
                  "models.py")
# Only what run.py's imports need, with lower bounds that exist on PyPI.
REQUIREMENTS = ("torch>=2.1", "numpy>=1.24", "pillow>=10")


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
        with naming_failed_writes(dst):
            shutil.copy2(src, dst)
    # a module since removed or renamed in the sources must not linger in the shipped copy
    shipped = {dst for _, dst in files}
    for stale in [*out.glob("facekd/*.py"), *out.glob("students/*.py")]:
        if stale not in shipped:
            stale.unlink()
    with naming_failed_writes(out / "requirements.txt"):
        (out / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")


def refresh(out: str | Path) -> dict:
    """Rewrite an existing export's code from the current sources, keeping its ckpt.pth;
    the weights are first checked to still fit that code. Returns the ckpt.pth's metadata."""
    out = Path(out)
    ckpt = load_checkpoint(out / "ckpt.pth")
    shippable_student(ckpt, out / "ckpt.pth")
    copy_runtime(out)
    return {k: v for k, v in ckpt.items() if k != "model"}


def refuse_replacing(out: Path) -> None:
    """Refuse to export over a folder whose ckpt.pth holds a model already, naming the score
    that would be lost (issue 34: the README's example replaced the shipped student, val
    0.8455, with a 3-minute one, 0.1006, without a word). --force lets it through."""
    existing = out / "ckpt.pth"
    if not existing.exists():
        return
    try:
        held = load_checkpoint(existing)
        score = held.get("val_fscore")
        what = f"{held['model_cfg'].get('arch', 'a model')}, val F-score " + ("n/a" if score is None else f"{score:.4f}")
    except (ValueError, OSError, KeyError, AttributeError):  # a damaged file is still the user's
        what = "a file that does not load as a checkpoint"
    raise FileExistsError(f"{existing}: holds a solution already ({what}); pass --force to replace it, "
                          "or choose another --out")


def export(checkpoint: str | Path, out: str | Path, force: bool = False) -> dict:
    """Write a runnable solution folder; returns the metadata stored in its ckpt.pth. A folder
    holding a ckpt.pth already is refused unless `force`.

    Everything is checked before anything is written, and the weights are written last,
    so a refused or failed export never leaves a ckpt.pth that looks complete.
    """
    if not RUN_PY.is_file():
        raise FileNotFoundError(f"{RUN_PY}: canonical run.py not found (export needs the facekd source tree)")
    checkpoint, out = Path(checkpoint), Path(out)
    check_output_folder(out)
    if not force:
        refuse_replacing(out)
    ckpt = load_checkpoint(checkpoint)
    model, n_params = shippable_student(ckpt, checkpoint)
    val = ckpt.get("val_fscore")
    meta = {"model_cfg": dict(ckpt["model_cfg"]), "params": n_params,
            "val_fscore": None if val is None else float(val), "source": str(checkpoint),
            "git_commit": git_commit(), "facekd_version": facekd.__version__}
    copy_runtime(out)
    save_checkpoint({"model": model.state_dict(), **meta}, out / "ckpt.pth")
    return meta
