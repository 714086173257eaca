"""`facekd export --format onnx`: parity with torch on a tiny student, run_onnx.py, and the
refusal without the deploy extra. Skipped where onnxruntime is not installed."""

from __future__ import annotations

import builtins
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facekd.app.cli import main
from facekd.data import SAMPLE_DATA
from facekd.labels import NUM_CLASSES
from facekd.models import named_config
from tests.test_export import make_checkpoint


@pytest.fixture
def tiny_ckpt(tmp_path):
    return make_checkpoint(tmp_path / "best.pt", named_config("tiny", 64))


def test_onnx_export_matches_torch_and_runs_without_torch(tmp_path, tiny_ckpt, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from facekd.app.onnx_export import FSCORE_TOLERANCE, PIXEL_AGREEMENT, export_onnx
    out = tmp_path / "onnx"
    meta = export_onnx(tiny_ckpt, out, SAMPLE_DATA)
    assert meta["opset"] >= 17 and meta["flip_tta"] == "inside the graph"
    check = meta["parity"]
    assert check["pixel_agreement"] >= PIXEL_AGREEMENT
    assert abs(check["val_fscore_torch"] - check["val_fscore_onnx"]) <= FSCORE_TOLERANCE
    assert {p.name for p in out.iterdir()} == {"model.onnx", "onnx.json", "run_onnx.py"}
    image = next((SAMPLE_DATA / "val" / "images").iterdir())
    # -c with torch made unimportable: run_onnx.py must not need it
    code = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code, str(out / "run_onnx.py"), "--input", str(image),
                           "--output", str(tmp_path / "mask.png")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    mask = Image.open(tmp_path / "mask.png")
    assert mask.mode == "P" and mask.size == Image.open(image).size
    assert np.asarray(mask).max() < NUM_CLASSES


def test_onnx_export_without_the_extra_is_refused_and_writes_nothing(tmp_path, tiny_ckpt, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxruntime"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)  # what Python raises
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    out = tmp_path / "onnx"
    assert main(["export", "--format", "onnx", "--checkpoint", str(tiny_ckpt), "--out", str(out)]) == 2
    assert 'pip install -e ".[deploy]"' in capsys.readouterr().err
    assert not out.exists()
