"""Files read and written safely, shared by the commands and the exported solution/run.py
(which ships this file): torch files loaded without running pickled code, outputs written
atomically, output paths checked before any work, and errors as one line naming the file.

Depends only on torch, because the export ships this file.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import uuid
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch


class InputError(ValueError):
    """A bad input file, or an output that cannot or must not be written; the message names the path."""


class WriteError(OSError):
    """A write that failed part-way, on a full disk (ENOSPC) for one: the OS error names no
    file ("[Errno 28] No space left on device"), so this one-line error names the output.
    errno and strerror are the cause's, so callers can still tell a full disk apart."""

    def __init__(self, path: str | os.PathLike, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))

    def __str__(self) -> str:
        return f"{self.filename}: could not be written ({self.strerror})"


@contextmanager
def naming_failed_writes(path: str | os.PathLike):
    """Raise an OSError from the block that names no file (what a write or a flush to a full
    disk raises), or names `path` among others (a copy's source and destination), as a
    WriteError naming `path`, the output the block writes. An error about another file
    passes unchanged."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        named = {str(name) for name in (e.filename, e.filename2) if name is not None}
        if named and str(path) not in named:
            raise
        raise WriteError(path, e) from e


def one_line(e: BaseException) -> str:
    """An exception as one line of a user error: torch's state-dict errors, for one, put
    each mismatch on a line of its own."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
    return f"{type(e).__name__}: {' '.join(lines[:2])}{more}"


ZIP_START = b"PK\x03\x04"  # the local header that opens every zip archive torch.save writes


def _torch_file_kind(f) -> str:
    """What a file object holds: "torch" for what torch.save writes (a zip archive, or before
    torch 1.6 a pickle stream, which starts with the protocol opcode 0x80), "damaged" for a
    zip archive cut short (a copy interrupted, or `truncate -s 30000 last.pt`): it starts as
    a zip does, but the central directory that zipfile looks for at the end is gone; or
    "other"."""
    start = f.tell()
    try:
        head = f.read(len(ZIP_START))
        f.seek(start)
        if head[:1] == b"\x80" or zipfile.is_zipfile(f):
            return "torch"
        return "damaged" if head == ZIP_START else "other"
    finally:
        f.seek(start)


def load_checkpoint(source: str | os.PathLike | io.BytesIO, name: str | None = None) -> dict:
    """The one way a file becomes a checkpoint dict (facekd.models.load_model makes the dict a
    model): on the CPU, since load_state_dict copies onto any device, from a path or an
    in-memory copy of a file named `name`. Errors are one line naming the file."""
    if not isinstance(source, io.BytesIO) and not Path(source).is_file():
        raise FileNotFoundError(f"{source}: checkpoint not found")
    name = name or str(source)
    ckpt = read_torch_file(source, name)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_cfg" not in ckpt:
        raise InputError(f"{name}: not a facekd checkpoint (expected a dict with 'model' and 'model_cfg')")
    return ckpt


def read_torch_file(source: str | os.PathLike | io.BytesIO, name: str | None = None):
    """torch.load(weights_only=True) on the CPU of a file (or an in-memory copy of one, named
    `name`), with a one-line InputError naming it: the layer under load_checkpoint, and what
    reads torch files that are not checkpoints (the soft-target cache).

    Torch's advice for a file that holds pickled objects (load it with weights_only=False)
    would run code from the file, so it is never passed on."""
    if isinstance(source, io.BytesIO):
        return _load_safely(source, name or "weights")
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: no such weights file")
    with path.open("rb") as f:
        return _load_safely(f, name or str(path))


def _load_safely(f, name: str):
    kind = _torch_file_kind(f)
    if kind == "damaged":
        raise InputError(f"{name}: truncated or damaged (a zip archive, as torch.save writes, whose end is "
                         "missing); copy or save it again")
    if kind == "other":
        raise InputError(f"{name}: not a PyTorch checkpoint (torch.save writes a zip archive)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about a file's pickle protocol before refusing it
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # a damaged file, not one that asks for objects
            raise InputError(f"{name}: not a readable weights file (truncated or damaged pickle data)") from e
        raise InputError(f"{name}: holds pickled Python objects, not only tensors; refusing to load it, "
                         "since that could run code from the file") from e
    except Exception as e:  # a corrupt or foreign file raises many types
        advice = "weights_only" in str(e)  # torch's advice to load it unsafely is never passed on
        raise InputError(f"{name}: not a readable weights file, truncated or damaged "
                         f"({type(e).__name__ if advice else one_line(e)})") from e


# The partial file atomic_write writes next to its target: .<name>.<8 hex digits>.tmp
PARTIAL_WRITE = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def is_partial_write(name: str) -> bool:
    """Whether a file name is atomic_write's partial file, left behind only by a process
    killed mid-write: never part of what a folder is meant to hold."""
    return PARTIAL_WRITE.fullmatch(name) is not None


@contextmanager
def atomic_write(path: str | os.PathLike):
    """A binary file object that becomes `path` only when the block succeeds, so a crash or
    a refused input never leaves a partial file and never replaces a previous good one.
    Unlike mkstemp's owner-only 0600, the file gets the umask's usual mode (0644).
    A write that fails (a full disk) is a WriteError naming `path`, not the partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with naming_failed_writes(path):
            try:
                with open(tmp, "xb") as f:
                    yield f
                os.replace(tmp, path)
            except OSError as e:
                if e.filename == str(tmp):  # the partial file is ours, not a name the user knows
                    raise WriteError(path, e) from e
                raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _entry(path: Path) -> Path:
    """The directory entry a write to `path` replaces: its folder resolved, its name kept."""
    path = Path(path).absolute()
    return path.parent.resolve() / path.name


def check_output_folder(folder: str | os.PathLike) -> None:
    """Refuse, before any work, an output folder that cannot be made or written: its nearest
    existing ancestor must be a writable folder."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{existing}: is a file, not a folder, so nothing can be written under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{existing}: folder is not writable")


def check_output_file(path: str | os.PathLike) -> None:
    """Refuse, before any work, a file output that cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file path")
    check_output_folder(path.parent)


def check_mask_jobs(jobs: list[tuple[Path, Path]], protected: tuple[Path, ...] = ()) -> None:
    """Refuse, before anything is predicted, (image, mask) jobs whose masks would overwrite
    an input image or a `protected` file (the weights), that two images would share, or that
    cannot be written. The message names the clashing files."""
    inputs = {}
    for path in [image for image, _ in jobs] + [Path(p) for p in protected]:
        inputs[_entry(path)] = inputs[Path(path).resolve()] = path  # the link and what it points to
    by_mask: dict[Path, tuple[Path, list[Path]]] = {}
    for image, mask in jobs:
        by_mask.setdefault(_entry(mask), (mask, []))[1].append(image)
    clashes = [f"{mask} would overwrite input {inputs[key]}" for key, (mask, _) in by_mask.items() if key in inputs]
    clashes += [f"{' and '.join(map(str, images))} would share the mask {mask}"
                for mask, images in by_mask.values() if len(images) > 1]
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise InputError(f"refusing to write masks: {clashes[0]}{more}; choose another output")
    for _, mask in jobs:
        if mask.is_dir():
            raise InputError(f"{mask}: is a folder, so the mask cannot be written there")
    for folder in {mask.parent for _, mask in jobs}:
        check_output_folder(folder)
