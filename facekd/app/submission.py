"""Build the challenge zip from a solution folder, and check a zip the way the graders will.

The zip holds masks/ and solution/ at its root. Masks are predicted by the solution's own
run.py in a fresh interpreter, so what gets zipped is exactly what the shipped code
produces, not what the (possibly newer) installed facekd would produce.
"""

from __future__ import annotations

import io
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from PIL import Image
from tqdm import tqdm

from facekd.models import load_model
from facekd import challenge
from facekd.files import atomic_write, check_output_file, is_partial_write, load_checkpoint, naming_failed_writes
from facekd.inference import list_images
from facekd.labels import NUM_CLASSES
from facekd.metric import name_some

MASK_SIZE = (512, 512)  # (width, height) of every challenge image, hence of every mask
SOLUTION_FILES = ("run.py", "ckpt.pth", "requirements.txt")
ROOT_FOLDERS = ("masks", "solution")
# What a member may hold, uncompressed, before it is read: a 512x512 mask PNG is under 1.1 MB
# even as RGBA stored without compression, a student under the limit about 7 MB in fp32. A
# zip can hold a few kB that unpack to gigabytes; such a member is named and not read.
MAX_MASK_BYTES = 4 << 20
MAX_CKPT_BYTES = 256 << 20
# The torch versions facekd supports: pyproject.toml's requirement (a test keeps them equal).
SUPPORTED_TORCH = SpecifierSet(">=2.1,<=2.14.1")
# torch releases to try a requirements.txt's specifier on, beside the versions it names itself:
# 2.1.0 to 2.14.3, the supported ones among them
TORCH_RELEASES = [Version(f"2.{minor}.{patch}") for minor in range(1, 15) for patch in range(4)]


@dataclass
class CheckReport:
    faults: list[str] = field(default_factory=list)
    masks: int = 0
    params: int | None = None

    @property
    def ok(self) -> bool:
        return not self.faults


def _unsafe_name(name: str) -> bool:
    """Absolute or parent-relative members can escape the folder they are unzipped into."""
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


def _member_faults(members: list[zipfile.ZipInfo]) -> list[str]:
    """Symbolic links (unzip recreates them, pointing anywhere, /etc/passwd included) and names
    stored twice (which copy an unzip keeps depends on the tool)."""
    faults = [f"{m.filename}: a symbolic link; a submission must hold plain files only"
              for m in members if stat.S_ISLNK(m.external_attr >> 16)]
    counts = Counter(m.filename for m in members)
    return faults + [f"{name}: stored {n} times; every member name must be unique"
                     for name, n in counts.items() if n > 1]


def _root_prefix(names: list[str], report: CheckReport) -> str:
    """Where masks/ and solution/ actually sit. A single wrapping folder (the usual result of
    zipping the folder rather than its contents) is a fault, but checking carries on inside
    it so that every other fault is named in the same run."""
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    if all(f in tops for f in ROOT_FOLDERS):
        return ""
    for top in sorted(tops):
        if all(any(n.startswith(f"{top}/{f}/") for n in names) for f in ROOT_FOLDERS):
            report.faults.append(f"masks/ and solution/ are inside a wrapping folder {top}/; they must be at the "
                                 "archive root (zip the folder's contents, not the folder)")
            return f"{top}/"
    for f in ROOT_FOLDERS:
        if f not in tops:
            elsewhere = sorted({n[:n.index(f"/{f}/") + 1] for n in names if f"/{f}/" in n})
            hint = f" (found under {', '.join(elsewhere)})" if elsewhere else ""
            report.faults.append(f"{f}/ is missing at the archive root{hint}")
    return ""


def _read_member(zf: zipfile.ZipFile, member: str, name: str, limit: int, report: CheckReport) -> bytes | None:
    """A member's bytes, or None with a fault when it unpacks to more than `limit` bytes. At
    most limit + 1 bytes are read, whatever size the member's header claims."""
    with zf.open(member) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        report.faults.append(f"{name}: {zf.getinfo(member).file_size:,} bytes unpacked, over the "
                             f"{limit >> 20} MB such a file could need; not read")
        return None
    return data


def _check_mask(name: str, data: bytes, report: CheckReport) -> None:
    buffer = io.BytesIO(data)
    try:
        with Image.open(buffer) as im:
            im.load()
            mode, size, ids = im.mode, im.size, np.asarray(im)
    except Exception as e:  # PIL raises many types for broken files
        reason = str(e).replace(f" {buffer!r}", "")  # PIL names the in-memory copy: <_io.BytesIO object at 0x..>
        report.faults.append(f"{name}: unreadable PNG ({type(e).__name__}: {reason})")
        return
    if mode != "P":
        # the scorer's convert("P") quantises an "L" or "RGB" mask's values into other ids
        report.faults.append(f"{name}: mode {mode!r}; masks must be palette (mode 'P') PNGs holding class ids")
    if size != MASK_SIZE:
        report.faults.append(f"{name}: {size[0]}x{size[1]}; masks must be {MASK_SIZE[0]}x{MASK_SIZE[1]}")
    if mode == "P" and ids.size and int(ids.max()) >= NUM_CLASSES:
        report.faults.append(f"{name}: holds id {int(ids.max())}; class ids must be 0..{NUM_CLASSES - 1}")


def count_shipped_params(data: bytes) -> int:
    """Rebuild the shipped model from its ckpt.pth and count it as the challenge does.

    load_model rebuilds it as trained, so an over-limit model is counted and reported rather
    than refused at build time, and loads the weights strictly, because run.py would fail on
    weights that do not match the config."""
    ckpt = load_checkpoint(io.BytesIO(data), "solution/ckpt.pth")
    model = load_model(ckpt, source="solution/ckpt.pth")
    return challenge.count_params(model)


def check_submission(zip_path: str | Path, images: str | Path | None = None) -> CheckReport:
    """Every fault in the zip; with `images`, also that there is exactly one mask per image."""
    report = CheckReport()
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path}: no such file")
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        report.faults.append(f"{zip_path}: not a zip archive ({e})")
        return report
    with zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        report.faults += [f"{n}: unsafe member name (absolute path or '..')" for n in names if _unsafe_name(n)]
        # a zip's separator is '/': a member a Windows tool stored as masks\x.png unzips as one oddly named file
        report.faults += [f"{n}: backslash in member name; zip paths must use '/'" for n in names if "\\" in n]
        report.faults += _member_faults(zf.infolist())
        root = _root_prefix(names, report)
        _check_solution(zf, names, f"{root}solution/", report)
        masks = _check_masks(zf, names, f"{root}masks/", report)
    if images is not None:
        stems = {p.stem for p in list_images(images)}
        missing, extra = sorted(stems - masks.keys()), sorted(masks.keys() - stems)
        if missing:
            report.faults.append(f"{len(missing)} image(s) have no mask: {name_some([s + '.png' for s in missing])}")
        if extra:
            report.faults.append(f"{len(extra)} mask(s) match no image: {name_some([s + '.png' for s in extra])}")
    return report


def _check_solution(zf: zipfile.ZipFile, names: list[str], solution: str, report: CheckReport) -> None:
    """The solution/ folder's files, its code, and its model rebuilt and counted as the
    challenge counts it."""
    if any(n.startswith(solution) for n in names):
        report.faults += [f"solution/{f} is missing" for f in SOLUTION_FILES if solution + f not in names]
    report.faults += [f"solution/{n[len(solution):]}: a partial file left by a write that was interrupted; "
                      "remove it" for n in names if n.startswith(solution) and is_partial_write(PurePosixPath(n).name)]
    _check_code(zf, [n for n in names if n.startswith(solution) and n.endswith(".py")], solution, report)
    if solution + "requirements.txt" in names:
        report.faults += requirements_faults(zf.read(solution + "requirements.txt").decode("utf-8", "replace"))
    if solution + "ckpt.pth" not in names:
        return
    data = _read_member(zf, solution + "ckpt.pth", "solution/ckpt.pth", MAX_CKPT_BYTES, report)
    if data is None:
        return
    try:
        report.params = count_shipped_params(data)
    except Exception as e:  # corrupt file, unknown arch, mismatched weights...
        report.faults.append(f"solution/ckpt.pth: cannot rebuild the model ({type(e).__name__}: {e})")
        return
    if report.params >= challenge.PARAM_LIMIT:
        report.faults.append(f"solution/ckpt.pth: {report.params:,} trainable parameters; the limit is "
                             f"fewer than {challenge.PARAM_LIMIT:,}")


def _check_code(zf: zipfile.ZipFile, modules: list[str], solution: str, report: CheckReport) -> None:
    """Each Python file under solution/ compiled (never run): a syntax error in run.py, or in
    a module it imports, fails the graders' run before its first mask."""
    for member in modules:
        name = f"solution/{member[len(solution):]}"
        try:
            compile(zf.read(member), name, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
            where = f", line {e.lineno}" if getattr(e, "lineno", None) else ""
            report.faults.append(f"{name}: does not compile ({type(e).__name__}: {getattr(e, 'msg', e)}{where})")


def requirements_faults(text: str) -> list[str]:
    """What is wrong with a solution's requirements.txt: a line that is not a requirement
    (which pip would refuse, so nothing would be installed), and a torch that is missing or
    pinned where facekd does not run. Whether a named package exists on PyPI is not checked:
    that needs the network."""
    faults, torch = [], None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split(" #", 1)[0].strip()  # pip's comments: at the line's start, or after a space
        if not line or line.startswith(("#", "-")):  # a comment, or an option (--index-url, -r ...)
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as e:
            faults.append(f"solution/requirements.txt: line {n}, {line!r}, is not a requirement pip can read "
                          f"({str(e).splitlines()[0]})")
            continue
        if canonicalize_name(requirement.name) == "torch":
            torch = requirement
    if torch is None:
        faults.append("solution/requirements.txt: does not list torch, which run.py needs")
    elif not any(torch.specifier.contains(v, prereleases=True) for v in _supported_torch_versions(torch)):
        faults.append(f"solution/requirements.txt: {torch} admits no torch version facekd supports "
                      f"(torch{SUPPORTED_TORCH}); write torch>=2.1")
    return faults


def _supported_torch_versions(requirement: Requirement) -> list[Version]:
    """The supported torch versions to try a requirement on: the releases, and the versions
    its own specifier names (2.3.0+cpu), where they are supported."""
    named = []
    for spec in requirement.specifier:
        try:
            named.append(Version(spec.version))
        except InvalidVersion:  # a wildcard: 2.3.*
            continue
    return [v for v in TORCH_RELEASES + named if SUPPORTED_TORCH.contains(v, prereleases=True)]


def _check_masks(zf: zipfile.ZipFile, names: list[str], prefix: str, report: CheckReport) -> dict[str, str]:
    """Each mask under masks/ checked; returns {image stem: member name}."""
    masks = {}
    mask_members = [n for n in names if n.startswith(prefix)]
    for n in mask_members:
        rel = n[len(prefix):]
        if "/" in rel or not rel.lower().endswith(".png"):
            report.faults.append(f"masks/{rel}: masks/ must hold only <image stem>.png files, no subfolders")
            continue
        if not rel.endswith(".png"):  # the graders open <stem>.png, which a case-sensitive file system does not find
            report.faults.append(f"masks/{rel}: the extension must be .png in lower case; name it "
                                 f"{PurePosixPath(rel).stem}.png")
            continue
        masks[PurePosixPath(rel).stem] = n
        data = _read_member(zf, n, f"masks/{rel}", MAX_MASK_BYTES, report)
        if data is not None:
            _check_mask(f"masks/{rel}", data, report)
    report.masks = len(masks)
    if mask_members and not masks:
        report.faults.append("masks/ holds no .png masks")
    return masks


def predict_with_solution(solution: Path, images: Path, masks_dir: Path, flip_tta: bool = True) -> int:
    """Run the solution's run.py over a folder; returns its exit status.

    A fresh interpreter in isolated mode (-I: no PYTHONPATH, no cwd on sys.path) imports
    the solution's shipped modules, never the already-imported facekd of this process.
    run.py lists each mask it writes, which drives the progress bar."""
    cmd = [sys.executable, "-I", str(solution / "run.py"), "--input", str(images), "--output", str(masks_dir),
           "--weights", str(solution / "ckpt.pth"), "--list-written"]
    if not flip_tta:
        cmd.append("--no-tta")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc, \
            tqdm(total=len(list_images(images)), desc="package", unit="img") as bar:
        for _ in proc.stdout:
            bar.update(1)
    return proc.returncode


def _zip_members(masks_dir: Path, solution: Path) -> list[tuple[Path, str]]:
    """(file, member name) for each mask and each file of the solution, bar Python's caches and
    the partial files of writes that were interrupted."""
    members = [(p, f"masks/{p.name}") for p in sorted(masks_dir.glob("*.png"))]
    for p in sorted(solution.rglob("*")):
        rel = p.relative_to(solution)
        if p.is_file() and "__pycache__" not in rel.parts and p.suffix != ".pyc" and not is_partial_write(p.name):
            members.append((p, f"solution/{rel.as_posix()}"))
    return members


def package(images: str | Path, solution: str | Path, out: str | Path, flip_tta: bool = True) -> CheckReport:
    """Predict, zip masks/ and solution/ at the archive root, then check the zip as the
    graders would. The zip replaces `out` only when run.py succeeded and the check found no
    fault, so a failed run keeps any previous good zip."""
    images, solution, out = Path(images), Path(solution), Path(out)
    for f in ("run.py", "ckpt.pth"):
        if not (solution / f).is_file():
            raise FileNotFoundError(f"{solution / f}: not found; create the solution folder with `facekd export`")
    if not images.is_dir() or not list_images(images):
        raise FileNotFoundError(f"{images}: not a folder of images")
    check_output_file(out)  # before the minutes of predicting, not after
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        masks_dir, candidate = Path(tmp) / "masks", Path(tmp) / out.name
        masks_dir.mkdir()
        status = predict_with_solution(solution, images, masks_dir, flip_tta)
        # listed before the zip is created, so a zip written inside solution/ cannot include itself
        members = _zip_members(masks_dir, solution)
        with naming_failed_writes(candidate), zipfile.ZipFile(candidate, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, arcname in members:
                zf.write(path, arcname)
        report = check_submission(candidate, images)
        if status != 0:
            report.faults.insert(0, f"solution/run.py exited with status {status} (its errors are printed above)")
        if report.ok:
            with atomic_write(out) as f, candidate.open("rb") as src:
                shutil.copyfileobj(src, f)
    return report
