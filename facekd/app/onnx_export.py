"""`facekd export --format onnx`: the student as one ONNX graph, and its parity with torch.

The graph takes a uint8 image batch at the model's input size and returns uint8 class ids
at that size. Everything `predict_logits` does after resizing is inside it: normalising,
the student, the flip TTA (the mirrored batch, its logits flipped back with left/right
swapped, the mean), the bilinear upsampling to the input size and the argmax. So a runtime
needs no torch and no pre- or post-processing code of ours; run_onnx.py only decodes,
resizes when an image is not at the input size, and writes the PNG.

onnx and onnxruntime are an optional extra (`pip install -e ".[deploy]"`): training,
the tests that do not need them and solution/ never import them.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from facekd.data import load_split
from facekd.files import check_output_folder, load_checkpoint, one_line
from facekd.inference import predict_logits
from facekd.labels import PALETTE
from facekd.metric import FScoreMeter
from facekd.models import shippable_student

OPSET = 17
RUN_ONNX = Path(__file__).resolve().parent / "run_onnx.py"  # copied next to model.onnx
# The parity bar: masks equal on 99.9% of val pixels, val F equal to 1e-4.
PIXEL_AGREEMENT = 0.999
FSCORE_TOLERANCE = 1e-4


def require_onnx():
    """(onnx, onnxruntime), or a ValueError saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name in ("onnx", "onnxruntime"):
            raise ValueError(f"--format onnx needs onnx and onnxruntime ({e.name} is not installed); "
                             "pip install -e \".[deploy]\"") from None
        # installed but broken (a missing shared library, a mismatched dependency): its own words
        raise ValueError(f"--format onnx: importing onnx or onnxruntime failed ({one_line(e)}); reinstall them: "
                         "pip install --force-reinstall -e \".[deploy]\"") from None
    return onnx, onnxruntime


class MaskGraph(nn.Module):
    """uint8 Bx3xSxS image -> uint8 BxSxS class ids, flip TTA optional: predict_logits's
    normalise, forward, TTA and upsampling, then the argmax, as one traceable module."""

    def __init__(self, model: nn.Module, flip_tta: bool):
        super().__init__()
        self.model, self.flip_tta = model.eval(), flip_tta

    def forward(self, images):
        logits = predict_logits(self.model, images, images.shape[-1], flip_tta=self.flip_tta)
        return logits.argmax(1).to(torch.uint8)


def write_onnx(model: nn.Module, path: Path, flip_tta: bool) -> None:
    size = model.input_size
    example = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    with warnings.catch_warnings():
        # The TorchScript exporter: torch 2.14's default, the torch.export one, needs onnxscript
        # as well; this one needs onnx alone and exports this plain conv net exactly.
        warnings.simplefilter("ignore")
        torch.onnx.export(MaskGraph(model, flip_tta), (example,), str(path), opset_version=OPSET, dynamo=False,
                          input_names=["image"], output_names=["mask"],
                          dynamic_axes={"image": {0: "batch"}, "mask": {0: "batch"}})


def onnx_masks(session, images: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Masks of a uint8 Nx3xSxS batch from an onnxruntime session."""
    return torch.cat([torch.from_numpy(session.run(None, {"image": images[i:i + batch].numpy()})[0])
                      for i in range(0, len(images), batch)])


def parity(model: nn.Module, onnx_path: Path, data_root, flip_tta: bool) -> dict:
    """torch's and ONNX Runtime's masks on the val split at the model's input size: the share
    of equal pixels and both val F-scores. Val images not at the input size are resized first,
    as predict_logits would."""
    _, ort = require_onnx()
    val = load_split(data_root, "val", model.input_size, show_progress=False)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        graph = MaskGraph(model, flip_tta)
        want = torch.cat([graph(val.images[i:i + 8]) for i in range(0, len(val), 8)])
    got = onnx_masks(session, val.images)
    scores = {}
    for name, masks in (("torch", want), ("onnx", got)):
        meter = FScoreMeter()
        meter.update(masks.long(), val.masks.long())
        scores[name] = meter.summary()["fscore"]
    return {"images": len(val), "pixel_agreement": (want == got).double().mean().item(),
            "val_fscore_torch": scores["torch"], "val_fscore_onnx": scores["onnx"]}


def export_onnx(checkpoint, out, data_root, flip_tta: bool = True) -> dict:
    """Write out/model.onnx, out/run_onnx.py and out/onnx.json (the parity check's result);
    returns onnx.json's content. Refused, with nothing written, without the extra installed,
    for a model that cannot ship, or when the parity check fails."""
    require_onnx()
    checkpoint, out = Path(checkpoint), Path(out)
    check_output_folder(out)
    model, n_params = shippable_student(load_checkpoint(checkpoint), checkpoint)
    staging = out.with_name(f".{out.name}.onnx-staging")  # renamed into place only once parity holds
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write_onnx(model, staging / "model.onnx", flip_tta)
        check = parity(model, staging / "model.onnx", data_root, flip_tta)
        _check_parity(check, checkpoint)
        meta = {"source": str(checkpoint), "params": n_params, "opset": OPSET, "input_size": model.input_size,
                "flip_tta": "inside the graph" if flip_tta else "off", "parity": check, "palette": PALETTE}
        (staging / "onnx.json").write_text(json.dumps(meta, indent=2) + "\n")
        shutil.copy2(RUN_ONNX, staging / "run_onnx.py")
        out.mkdir(parents=True, exist_ok=True)
        for f in staging.iterdir():
            f.replace(out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def _check_parity(check: dict, checkpoint) -> None:
    gap = abs(check["val_fscore_torch"] - check["val_fscore_onnx"])
    if check["pixel_agreement"] < PIXEL_AGREEMENT or gap > FSCORE_TOLERANCE:
        raise ValueError(f"{checkpoint}: ONNX Runtime disagrees with torch ({100 * check['pixel_agreement']:.3f}% "
                         f"of val pixels equal, val F {check['val_fscore_torch']:.5f} against "
                         f"{check['val_fscore_onnx']:.5f}); nothing written")
