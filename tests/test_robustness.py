"""Issue 14: bad or odd inputs, one test per class of defect. Every user error is one line
that names the file, refused before any work, and nothing a user had is lost."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import facekd.engine as engine
from facekd.app.cli import main
from facekd.app.export import REPO_ROOT, export
from facekd.app.predict import predict_paths
from facekd.app.submission import check_submission
from facekd.checkpoint import save_checkpoint
from facekd.data import load_split
from facekd.evaluation import evaluate
from facekd.losses import training_loss
from facekd.files import InputError, load_checkpoint, read_torch_file
from facekd.inference import MAX_PIXELS, list_images, load_rgb, save_mask
from facekd.labels import NUM_CLASSES, PALETTE
from facekd.metric import FScoreMeter, read_mask
from facekd.models import named_config
from tests.reference import reference_fscore
from tests.test_export import VAL_IMAGES, make_checkpoint

RUN_PY = REPO_ROOT / "solution" / "run.py"


def run_py(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-B", str(RUN_PY), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def one_line_error(text: str, *names) -> None:
    """A user error: exactly one line, no traceback, naming each of `names`. A progress bar
    that cleared itself with carriage returns before the error is not a line."""
    lines = text.split("\r")[-1].strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    for name in names:
        assert str(name) in lines[0], (name, text)


def cli_error(capsys, *argv) -> str:
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    return err


@pytest.fixture(scope="module")
def tiny_solution(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("solution")
    export(make_checkpoint(tmp / "best.pt", named_config("tiny", 64)), tmp / "solution")
    return tmp / "solution"


def save_ids(ids: np.ndarray, path: Path) -> None:
    """A palette PNG holding `ids` as they are, valid or not (mask_image refuses ids >= 19)."""
    im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids).tobytes())
    im.putpalette(PALETTE)
    im.save(path)


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height: what a decompression bomb looks like
    to Image.open, without allocating it here."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # and its CRC over type + fields
    path.write_bytes(bytes(data))
    return path


# 1. invalid predicted ids: a miss for the true class, in both scoring paths

def _masks_with_invalid_ids(sample_root):
    rng = np.random.default_rng(0)
    gts = [read_mask(p) for p in sorted((sample_root / "val" / "masks").glob("*.png"))[:3]]
    preds = []
    for g in gts:
        p = g.copy()
        p[rng.random(g.shape) < 0.05] = 200
        p[:50, :50] = 255
        preds.append(p)
    return gts, preds


def test_invalid_predicted_ids_score_as_misses_like_the_reference(sample_root):
    gts, preds = _masks_with_invalid_ids(sample_root)
    meter, clean = FScoreMeter(), FScoreMeter()
    for g, p in zip(gts, preds):
        meter.update(torch.from_numpy(p)[None], torch.from_numpy(g)[None])
        clean.update(torch.from_numpy(g)[None], torch.from_numpy(g)[None])
    expected = np.mean([reference_fscore(g, p) for g, p in zip(gts, preds)])
    assert meter.summary()["fscore"] == pytest.approx(expected, abs=1e-9)
    assert meter.summary()["fscore"] < clean.summary()["fscore"] - 0.01
    assert meter.summary()["invalid_pixels"] > 0 and clean.summary()["invalid_pixels"] == 0


def test_training_validation_scores_invalid_ids_like_the_reference(sample_root):
    """facekd.evaluation.evaluate, the training-time path: a model with more output channels than
    classes predicts ids >= 19 for some pixels."""
    class TooManyClasses(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, NUM_CLASSES + 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    torch.manual_seed(0)
    val = load_split(sample_root, "val", size=64, show_progress=False)
    summary, preds = evaluate(TooManyClasses(), val, 64, flip_tta=False, return_preds=True)
    assert (preds >= NUM_CLASSES).any() and (preds < NUM_CLASSES).any()
    expected = np.mean([reference_fscore(g.numpy(), p.numpy()) for g, p in zip(val.masks, preds)])
    assert summary["fscore"] == pytest.approx(expected, abs=1e-9)


def test_cli_evaluate_reports_invalid_ids_and_refuses_non_predictions(tmp_path, sample_root, capsys):
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    gts, preds = _masks_with_invalid_ids(sample_root)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for i, (g, p) in enumerate(zip(gts, preds)):
        save_ids(g, gt_dir / f"{i}.png")
        save_ids(p if i == 0 else g, pred_dir / f"{i}.png")
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir)]) == 0
    out = capsys.readouterr().out
    assert "1 prediction(s) hold ids outside 0..18" in out and "0.png" in out

    bad = pred_dir / "1.png"
    for make in (lambda: save_ids(np.full_like(gts[1], 200), bad),                      # all invalid
                 lambda: Image.open(gt_dir / "1.png").convert("RGB").save(bad),         # RGB
                 lambda: bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")):             # unreadable
        make()
        cli_error(capsys, "evaluate", "--pred", pred_dir, "--gt", gt_dir).index(str(bad))


# 2. outputs that would overwrite an input, or that two inputs would share

def _png_images(folder: Path, n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for src in list_images(VAL_IMAGES)[:n]:
        with Image.open(src) as im:
            im.save(folder / f"{src.stem}.png")
        paths.append(folder / f"{src.stem}.png")
    return paths


def test_predict_refuses_to_overwrite_inputs_or_share_masks(tmp_path, capsys):
    weights = make_checkpoint(tmp_path / "best.pt", named_config("tiny", 64))
    images = _png_images(tmp_path / "images")
    before = {p: p.read_bytes() for p in images}
    err = cli_error(capsys, "predict", "--weights", weights, "--input", tmp_path / "images",
                    "--output", tmp_path / "images")
    assert "would overwrite input" in err and images[0].name in err
    assert {p: p.read_bytes() for p in images} == before

    shutil.copy(next(VAL_IMAGES.glob(f"{images[0].stem}.*")), tmp_path / "images" / f"{images[0].stem}.jpg")
    err = cli_error(capsys, "predict", "--weights", weights, "--input", tmp_path / "images",
                    "--output", tmp_path / "masks")
    assert "would share the mask" in err and f"{images[0].stem}.jpg" in err
    assert not (tmp_path / "masks").exists()  # refused before anything was predicted


def test_run_py_refuses_to_overwrite_its_input(tmp_path):
    image = _png_images(tmp_path)[0]
    before = image.read_bytes()
    proc = run_py("--input", image, "--output", image, cwd=tmp_path)
    assert proc.returncode == 1
    one_line_error(proc.stderr, image)
    assert image.read_bytes() == before
    proc = run_py("--input", tmp_path, "--output", tmp_path, cwd=tmp_path)
    assert proc.returncode == 1 and "would overwrite input" in proc.stderr
    assert image.read_bytes() == before


# 3. a failed package keeps the previous good zip

def test_failed_package_keeps_the_previous_zip(tmp_path, tiny_solution, capsys):
    images = tmp_path / "images"
    shutil.copytree(VAL_IMAGES, images)
    out = tmp_path / "submission.zip"
    assert main(["package", "--images", str(images), "--solution", str(tiny_solution), "--out", str(out)]) == 0
    good = out.read_bytes()
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    assert main(["package", "--images", str(images), "--solution", str(tiny_solution), "--out", str(out)]) == 1
    assert "not written" in capsys.readouterr().out
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "submission.zip"]  # no temporary left behind


# 4. every Pillow mode and bit depth: converted correctly, or refused

def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    grey = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"
    rgb = load_rgb(tmp_path / "g16.png")
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[..., 0].astype(int) - np.round(grey / 257)).max() <= 1
    assert (rgb[..., 0] == rgb[..., 2]).all()


# every mode some format stores, hence every mode Image.open can return (HSV, La and RGBa none)
@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "LA", "PA", "RGBX", "I;16",
                                  "I;16B"])
def test_every_mode_with_a_known_range_converts(tmp_path, mode):
    with Image.open(next(iter(list_images(VAL_IMAGES)))) as im:
        reference = im.convert("RGB").resize((32, 32))
    odd = reference.convert(mode) if not mode.startswith("I;16") else Image.new(mode, (32, 32))
    path = tmp_path / "odd.tiff"
    odd.save(path)
    rgb = load_rgb(path)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    if mode in ("RGB", "RGBX", "RGBA", "CMYK", "YCbCr"):  # colour survives
        assert np.abs(rgb.astype(int) - np.asarray(reference, dtype=int)).mean() < 8


@pytest.mark.parametrize("mode", ["I", "F"])
def test_modes_without_a_fixed_range_are_refused(tmp_path, mode):
    Image.new(mode, (8, 8)).save(tmp_path / "x.tiff")
    with pytest.raises(InputError, match=f"x.tiff: mode {mode}"):
        load_rgb(tmp_path / "x.tiff")


# 5. decompression bombs and oversized images cost one mask, with a named error

@pytest.mark.parametrize("size", [(15000, 15000), (5000, 4000)])
def test_oversized_image_costs_one_mask(tmp_path, size):
    images = tmp_path / "images"
    good = _png_images(images, n=1)[0]
    bomb = png_claiming(images / "bomb.png", *size)
    with pytest.raises(InputError, match=rf"bomb.png: image too large.*{MAX_PIXELS:,} pixels \(4096x4096\)"):
        load_rgb(bomb)
    weights = make_checkpoint(tmp_path / "best.pt", named_config("tiny", 64))
    result = predict_paths(weights, images, tmp_path / "masks", show_progress=False)
    assert result["written"] == 1 and len(result["failed"]) == 1 and "bomb.png" in result["failed"][0]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [f"{good.stem}.png"]


def test_run_py_folder_with_a_bomb_writes_every_other_mask(tmp_path, tiny_solution):
    images = tmp_path / "images"
    good = _png_images(images, n=2)
    png_claiming(images / "a_bomb.png", 15000, 15000)  # sorted first: the images after it still get masks
    proc = subprocess.run([sys.executable, str(tiny_solution / "run.py"), "--input", str(images),
                           "--output", str(tmp_path / "masks")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    one_line_error(proc.stderr, "a_bomb.png", "4096x4096")
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == sorted(p.name for p in good)


# 6. output-path mistakes: one line naming the path, before any work

def test_run_py_output_path_mistakes(tmp_path):
    image = _png_images(tmp_path / "images", n=1)[0]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "a_folder").mkdir()
    cases = [(image, tmp_path / "a_folder", "a_folder"),           # a file's output is an existing folder
             (tmp_path / "images", a_file, "a_file"),               # a folder's output is an existing file
             (image, a_file / "mask.png", "a_file")]                # under a file
    for src, dst, named in cases:
        proc = run_py("--input", src, "--output", dst, cwd=tmp_path)
        assert proc.returncode == 1, (src, dst)
        one_line_error(proc.stderr, named)
    assert a_file.read_text() == "x"


def test_cli_output_path_mistakes_are_refused_before_work(tmp_path, tiny_solution, capsys, monkeypatch):
    import facekd.app.submission as submission
    import facekd.audit as audit

    def no_work(*args, **kwargs):
        raise AssertionError("the output should have been refused before any work")
    monkeypatch.setattr(submission, "predict_with_solution", no_work)
    monkeypatch.setattr(audit, "audit_split", no_work)
    (tmp_path / "folder.zip").mkdir()
    err = cli_error(capsys, "package", "--images", VAL_IMAGES, "--solution", tiny_solution,
                    "--out", tmp_path / "folder.zip")
    assert "folder.zip: is a folder" in err
    (tmp_path / "a_file").write_text("x")
    assert "a_file: is a file" in cli_error(capsys, "audit", "--fix", tmp_path / "a_file")
    assert "a_file: is a file" in cli_error(capsys, "predict", "--weights", tiny_solution / "ckpt.pth",
                                            "--input", VAL_IMAGES, "--output", tmp_path / "a_file")
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # as a non-root user in a read-only folder
    assert "not writable" in cli_error(capsys, "predict", "--weights", tiny_solution / "ckpt.pth",
                                       "--input", VAL_IMAGES, "--output", tmp_path / "masks")


def test_debug_flag_re_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "out")])


# 7. written files get the umask's usual mode, not mkstemp's 0600

def test_masks_zips_and_exports_are_world_readable(tmp_path, tiny_solution):
    old = os.umask(0o022)
    try:
        save_mask(np.zeros((8, 8), np.uint8), tmp_path / "m.png")
        out = tmp_path / "submission.zip"
        assert main(["package", "--images", str(VAL_IMAGES), "--solution", str(tiny_solution),
                     "--out", str(out)]) == 0
        export(tiny_solution / "ckpt.pth", tmp_path / "exported")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.png").stat().st_mode) == 0o644
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    with zipfile.ZipFile(out) as zf:
        modes = {stat.S_IMODE(i.external_attr >> 16) for i in zf.infolist() if not i.is_dir()}
    assert modes == {0o644}
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "exported").rglob("*") if p.is_file()} == {0o644}


# 10. weights that do not fit their model config

def test_predict_with_mismatched_weights_is_one_line(tmp_path, capsys):
    ckpt = torch.load(make_checkpoint(tmp_path / "best.pt", named_config("tiny", 64)),
                      weights_only=True)
    ckpt["model_cfg"] = {**ckpt["model_cfg"], "head_dim": 16}
    save_checkpoint(ckpt, tmp_path / "mismatch.pt")
    err = cli_error(capsys, "predict", "--weights", tmp_path / "mismatch.pt", "--input", VAL_IMAGES,
                    "--output", tmp_path / "masks")
    assert "mismatch.pt: weights do not match their model_cfg" in err
    ckpt["model_cfg"] = {**ckpt["model_cfg"], "arch": "mystery"}
    save_checkpoint(ckpt, tmp_path / "mystery.pt")
    assert "mystery.pt: its model_cfg cannot be built" in cli_error(
        capsys, "predict", "--weights", tmp_path / "mystery.pt", "--input", VAL_IMAGES, "--output", tmp_path / "m")


# 11. smaller items

def test_folders_and_single_files_accept_the_same_images(tmp_path):
    with Image.open(next(iter(list_images(VAL_IMAGES)))) as im:
        im.save(tmp_path / "x.tif")
    (tmp_path / "notes.txt").write_text("not an image")
    assert list_images(tmp_path) == [tmp_path / "x.tif"] == list_images(tmp_path / "x.tif")
    with pytest.raises(InputError, match="notes.txt: not an image file"):
        list_images(tmp_path / "notes.txt")


def test_check_submission_flags_backslashes(tmp_path, tiny_solution):
    zip_path = tmp_path / "s.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("masks\\x.png", b"")
        for p in tiny_solution.rglob("*"):
            if p.is_file():
                zf.write(p, f"solution/{p.relative_to(tiny_solution).as_posix()}")
    assert any("masks\\x.png: backslash" in f for f in check_submission(zip_path).faults)


def test_unsafe_weights_are_refused_without_torchs_advice(tmp_path):
    torch.save({"model": Path("x"), "model_cfg": {}}, tmp_path / "unsafe.pt")  # a pickled object, not a tensor
    with pytest.raises(InputError) as e:
        read_torch_file(tmp_path / "unsafe.pt")
    one_line_error(str(e.value), "unsafe.pt")
    assert "weights_only" not in str(e.value)
    proc = run_py("--input", next(iter(list_images(VAL_IMAGES))), "--output", tmp_path / "m.png",
                  "--weights", tmp_path / "unsafe.pt", cwd=tmp_path)
    assert proc.returncode == 1
    one_line_error(proc.stderr, "unsafe.pt")


# Issue 28: faults from the bad-input battery

def _evil_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint whose unpickling would run code (it would create `marker`)."""
    class RunsCode:
        def __reduce__(self):
            return (marker.write_text, ("ran",))
    torch.save({"model": RunsCode(), "model_cfg": {}}, path)
    return path


def test_a_text_file_is_not_called_pickled_objects(tmp_path):
    """Fault 10: every UnpicklingError used to get the 'pickled Python objects' diagnosis."""
    (tmp_path / "notes.pt").write_text("not a checkpoint at all\n")
    with pytest.raises(InputError) as e:
        read_torch_file(tmp_path / "notes.pt")
    assert str(e.value) == f"{tmp_path / 'notes.pt'}: not a PyTorch checkpoint (torch.save writes a zip archive)"
    marker = tmp_path / "ran"
    with pytest.raises(InputError, match="evil.pt: holds pickled Python objects"):
        read_torch_file(_evil_checkpoint(tmp_path / "evil.pt", marker))
    assert not marker.exists()


def test_no_command_passes_on_torchs_advice_to_load_unsafely(tmp_path, tiny_solution, capsys):
    """Fault 12: check-submission (hence package) and the soft-target cache reader quoted
    torch's "Re-running torch.load with weights_only set to False will likely succeed"."""
    marker = tmp_path / "ran"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    zip_path = tmp_path / "s.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in tiny_solution.rglob("*"):
            if p.is_file() and p.name != "ckpt.pth":
                zf.write(p, f"solution/{p.relative_to(tiny_solution).as_posix()}")
        zf.write(evil, "solution/ckpt.pth")
        zf.write(next(iter(list_images(VAL_IMAGES))), "masks/x.png")
    assert main(["check-submission", str(zip_path)]) == 1
    out = capsys.readouterr().out
    assert "solution/ckpt.pth: holds pickled Python objects" in out
    assert "weights_only" not in out and "Re-running" not in out

    from distill.soft_targets import _read_cache
    _read_cache(evil, {})
    out = capsys.readouterr().out
    assert "evil.pt: holds pickled Python objects" in out and "weights_only" not in out
    assert not marker.exists()


@pytest.mark.parametrize("argv, named", [
    (["--budget", "inf"], "--budget"), (["--budget", "1e300"], "--budget"), (["--budget", "nan"], "--budget"),
    (["--set", "budget_minutes=inf"], "budget_minutes"), (["--set", "lr=inf"], "lr"),
    (["--set", "kd_weight=inf"], "kd_weight"), (["--set", "warmup_epochs=nan"], "warmup_epochs"),
    (["--set", "scale_max=inf"], "scale_max"), (["--set", "soft_target_scales=[1.0, inf]"], "soft_target_scales")])
def test_non_finite_numbers_are_refused_up_front_naming_the_key(tmp_path, capsys, argv, named):
    """Faults 1, 6 and 8: inf and nan passed every range check (nan < 0 is False), and then
    crashed in format_seconds or random_theta, or trained a NaN model with exit 0."""
    for command in (["distill", "--teacher", "none"], ["pipeline"]):
        out = tmp_path / command[0]
        err = cli_error(capsys, *command, "--out", out, *argv)
        assert named in err, err
        assert not out.exists()


def test_export_refuses_non_finite_weights(tmp_path):
    """Fault 7: an all-NaN best.pt was exported with exit 0 (its masks all background)."""
    ckpt = torch.load(make_checkpoint(tmp_path / "best.pt", named_config("tiny", 64)),
                      weights_only=True)
    name = next(k for k, t in ckpt["model"].items() if t.is_floating_point())
    ckpt["model"][name].fill_(float("nan"))
    save_checkpoint(ckpt, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=f"nan.pt: 1 weight tensor\\(s\\) hold inf or NaN \\(e.g. {name}\\)"):
        export(tmp_path / "nan.pt", tmp_path / "solution")
    assert not (tmp_path / "solution" / "ckpt.pth").exists()


@pytest.mark.parametrize("classes", [5, 21])
def test_a_teacher_with_another_class_count_is_refused_when_loaded(tmp_path, capsys, classes):
    """Fault 9: a 5- or 21-class teacher failed in the KD loss with a traceback."""
    from facekd.models import build_model, named_config
    cfg = {**named_config("teacher_tiny", 64), "num_classes": classes}
    save_checkpoint({"model": build_model(cfg).state_dict(), "model_cfg": cfg}, tmp_path / "t.pt")
    for argv in (["distill", "--teacher", tmp_path / "t.pt", "--out", tmp_path / "run"],
                 ["pipeline", "--teacher", tmp_path / "t.pt", "--out", tmp_path / "pipe"]):
        err = cli_error(capsys, *argv)
        assert f"t.pt: predicts {classes} classes" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "pipe").exists()


def test_a_pipeline_resumed_with_another_audit_setting_is_refused(tmp_path, capsys, monkeypatch):
    """Fault 13: a finished --no-audit pipeline resumed without it ran the audit after the fact."""
    import facekd.app.pipeline as pipeline
    out = tmp_path / "pipe"
    monkeypatch.setattr(pipeline.Pipeline, "run_stage", lambda self, name, checkpoint="best.pt": None)
    # --json: with no stage run there is no solution for the closing lines to name
    assert main(["pipeline", "--no-audit", "--json", "--out", str(out)]) == 0
    capsys.readouterr()
    err = cli_error(capsys, "pipeline", "--resume", "--out", out)
    assert "was started without the label audit; resume it with --no-audit" in err
    assert main(["pipeline", "--no-audit", "--resume", "--json", "--out", str(out)]) == 0


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, sample_root):
    """Fault 6: every epoch logged a NaN loss, metrics.jsonl held NaN, best.pt was all NaN."""
    from facekd.models import build_model, named_config
    from facekd.config import RunConfig, apply_overrides
    cfg = apply_overrides(RunConfig(), dict(model="tiny", resolutions=[[64, 3]], batch_size=8, warmup_epochs=0.5))
    model_cfg = named_config("tiny", 64)
    supervised = training_loss(cfg)
    calls = []

    def diverges_at_step_3(logits, images, labels, soft_targets=None):
        terms = supervised(logits, images, labels)
        calls.append(1)
        if len(calls) >= 3:  # 2 steps an epoch: the first step of epoch 1
            terms["loss"] = terms["loss"] * float("nan")
        return terms
    with pytest.raises(engine.NonFiniteLossError, match=r"\[teacher\] epoch 1, step 3: the loss is nan; .*epoch 0"):
        engine.fit(build_model(model_cfg), model_cfg, diverges_at_step_3, cfg, tmp_path / "run",
                   data_root=sample_root, stage="teacher", show_progress=False)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 0 and all(t.isfinite().all() for t in last["model"].values() if t.is_floating_point())
    assert all(t.isfinite().all() for t in load_checkpoint(tmp_path / "run" / "best.pt")["model"].values()
               if t.is_floating_point())
    import json

    def refuse(constant):
        raise AssertionError(f"non-standard JSON: {constant}")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line, parse_constant=refuse)["epoch"] for line in lines] == [0]


def test_resume_with_another_teacher_or_data_is_refused(tmp_path, sample_root, data_copy, capsys, kill_after_epoch):
    """Faults 3 and 4: the resumed run dropped its KD terms, or chose best.pt across two val sets,
    and config.json lost the record of the first teacher."""
    from facekd.models import build_model, named_config
    cfg = named_config("teacher_tiny", 64)
    for name in ("t.pt", "other.pt"):
        save_checkpoint({"model": build_model(cfg).state_dict(), "model_cfg": cfg}, tmp_path / name)
    run = tmp_path / "run"
    argv = ["distill", "--preset", "smoke", "--out", str(run), "--set", "resolutions=[[64, 2]]", "--set", "batch_size=8"]
    kill_after_epoch(0)
    assert main(argv + ["--teacher", str(tmp_path / "t.pt")]) == 130  # interrupted
    kill_after_epoch(None)
    capsys.readouterr()
    record = (run / "config.json").read_text()
    for other in (["--teacher", "none"], ["--teacher", str(tmp_path / "other.pt")],
                  ["--teacher", str(tmp_path / "t.pt"), "--data", str(data_copy)]):
        err = cli_error(capsys, *argv, "--resume", *other)
        assert "cannot be resumed" in err and ("teacher:" in err or "data_root:" in err), err
    assert (run / "config.json").read_text() == record
    os.chdir(tmp_path)  # the same teacher, given by a relative path, still resumes
    assert main(argv + ["--resume", "--teacher", "t.pt"]) == 0


# Issue 28, continued: faults 5, 11, 14 and 15

def last_line_error(capsys, *argv) -> str:
    """A user error that training met after its progress bars started: the error is the last line."""
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("facekd "), err
    return err.strip().splitlines()[-1]


def _student(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "student.pt", named_config("tiny", 64))


@pytest.fixture
def slow_steps(monkeypatch):
    """Each training step takes 1.5 s more: a budget of a second cannot hold one."""
    import time
    real_batch = engine.train_batch  # called once at the start of every training step
    monkeypatch.setattr(engine, "train_batch", lambda *a: (time.sleep(1.5), real_batch(*a))[1])


def test_a_refused_prune_budget_leaves_nothing_behind(tmp_path, capsys, slow_steps):
    """Fault 5: prune and prune --sweep refused a too-small budget after writing pruned.pt,
    prune_report.json and params_*/, so a plain rerun was refused ("already holds a run")."""
    student = _student(tmp_path)
    for sweep in ([], ["--sweep"]):
        out = tmp_path / f"pruned{len(sweep)}"
        # the sweep's own bar still stands above the error (tqdm's nested bars): the error is the last line
        check = last_line_error if sweep else cli_error
        err = check(capsys, "prune", "--student", student, "--ratio", "0.3,0.5" if sweep else "0.3", *sweep,
                    "--budget", "0.02", "--out", out, "--set", "resolutions=[[64, 1]]")
        assert "too small" in err
        assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_a_refused_pipeline_budget_leaves_nothing_behind(tmp_path, capsys, monkeypatch, slow_steps):
    """Fault 5: the pipeline left audit/ and summary.json behind; one known too small before any
    work (export, packaging and the report alone would not fit) is refused at once."""
    import facekd.app.pipeline as pipeline
    out = tmp_path / "pipe"
    err = cli_error(capsys, "pipeline", "--budget", "0.01", "--out", out)
    assert "alone take about" in err and not out.exists()
    monkeypatch.setattr(pipeline, "_tail_seconds", lambda *a, **k: 1.0)  # the teacher stage's check refuses
    err = cli_error(capsys, "pipeline", "--budget", "0.05", "--out", out)
    assert "too small" in err and not out.exists()


def test_a_pipeline_whose_last_training_stage_cannot_run_still_ships(tmp_path, capsys, monkeypatch):
    """Friction 9: a budget too small for the prune stage failed the whole pipeline."""
    import facekd.app.pipeline as pipeline
    from facekd.budget import BudgetError

    def no_time(self):
        raise BudgetError("a budget of 0.06 min is too small for this run")
    monkeypatch.setattr(pipeline.Pipeline, "prune", no_time)
    out = tmp_path / "pipe"
    assert main(["pipeline", "--no-audit", "--out", str(out), "--set", "resolutions=[[64, 1]]"]) == 0
    import json
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["solution"]["from"] == "distill"
    assert (out / "submission.zip").is_file() and not (out / "prune").exists()


def test_prune_checks_its_teacher_before_pruning(tmp_path, capsys):
    """Fault 11: prune --teacher evil.pt was refused only after pruning, leaving pruned.pt."""
    marker = tmp_path / "ran"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    for argv in (["prune", "--ratio", "0.3"], ["prune", "--ratio", "0.3,0.5", "--sweep"]):
        out = tmp_path / "out"
        err = cli_error(capsys, *argv, "--student", _student(tmp_path), "--teacher", evil, "--out", out)
        assert "evil.pt: holds pickled Python objects" in err
        assert not out.exists() and not marker.exists()


def test_pipeline_checks_its_teacher_before_any_stage(tmp_path, capsys):
    """Fault 11: pipeline --teacher evil.pt was refused after the audit stage, leaving a folder
    that neither a rerun nor --resume with a good teacher would accept."""
    marker = tmp_path / "ran"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    out = tmp_path / "pipe"
    err = cli_error(capsys, "pipeline", "--teacher", evil, "--out", out)
    assert "evil.pt: holds pickled Python objects" in err
    assert not out.exists() and not marker.exists()


def test_pipeline_checks_its_images_before_any_stage(tmp_path, capsys, monkeypatch):
    """Fault 11: pipeline --images nowhere ran the audit, teacher and distill stages and failed
    only when packaging."""
    import facekd.app.pipeline as pipeline

    def no_work(*args, **kwargs):
        raise AssertionError("--images should have been refused before any stage")
    monkeypatch.setattr(pipeline.Pipeline, "run_stage", no_work)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "pipe"
    for images in (tmp_path / "nowhere", tmp_path / "empty"):
        err = cli_error(capsys, "pipeline", "--images", images, "--out", out)
        assert f"--images {images}: not a folder of images" in err
        assert not out.exists()


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl", "result.json"])
def test_a_folder_holding_run_files_is_not_overwritten(tmp_path, capsys, name):
    """Fault 14: only an existing last.pt blocked reuse; a user's own files were overwritten."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text("my own notes\n")
    for argv in (["distill", "--teacher", "none"], ["prune", "--ratio", "0.3", "--student", _student(tmp_path)]):
        err = cli_error(capsys, *argv, "--out", out, "--set", "resolutions=[[64, 1]]")
        assert f"{out} already holds a run ({name})" in err
    assert (out / name).read_text() == "my own notes\n" and sorted(p.name for p in out.iterdir()) == [name]


@pytest.mark.parametrize("name", ["pruned.pt", "prune_report.json"])
def test_prune_does_not_overwrite_a_users_prune_files(tmp_path, capsys, name):
    """Fault 14: prune --out mine overwrote the user's own pruned.pt and prune_report.json."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text("my own notes\n")
    err = cli_error(capsys, "prune", "--ratio", "0.3", "--checkpoint", _student(tmp_path), "--out", out,
                    "--set", "resolutions=[[64, 1]]")
    assert f"{out} already holds a run ({name})" in err
    assert (out / name).read_text() == "my own notes\n" and sorted(p.name for p in out.iterdir()) == [name]


def test_two_runs_on_one_folder_at_once_are_refused_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    """Fault 15: two runs given the same --out both exited 0, their metrics interleaved."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from facekd.run_folder import run_folder_lock\n"
         "with run_folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["distill", "--teacher", "none", "--out", out, "--set", "resolutions=[[64, 1]]"]
        err = cli_error(capsys, *argv)
        assert f"{out} is in use by another facekd run (pid {holder.pid}" in err
    finally:
        holder.kill()  # as kill -9 would: its lock file stays behind
        holder.wait()
    assert (out / "facekd.lock").is_file()
    assert main(list(map(str, argv))) == 0  # the dead process's lock does not block for ever
    assert not (out / "facekd.lock").exists() and (out / "best.pt").is_file()
