"""`facekd quantize`: static int8 post-training quantization of a student, for the CPU.

PyTorch 2.14 has moved PT2E quantization (prepare_pt2e with the x86 quantizer) out of
torch into torchao. FX graph mode with the x86 backend is still in torch and runs int8
convs directly. Timed side by side at one thread on the development machine (the shipped
student, 512²; docs/RESULTS_ARCHIVE.md): fp32 61.6 ms, FX x86 20.6 ms, PT2E (torchao 0.18) 91.6 ms
as exported and 16.8 ms once compiled by inductor with freezing. PT2E's 18% would cost an
extra dependency, a C++ compiler and 8 s of compiling at every load, and its compiled
graph does not save as plain tensors; FX needs none of that, so it is what we use.

Activation ranges are calibrated on training images, never val, which scores the result.
A quantized checkpoint keeps the fp32 student's model_cfg and parameter count beside the
int8 state dict; loading it rebuilds the same FX graph from the config and fills it.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from facekd.challenge import PARAM_LIMIT, count_params
from facekd.checkpoint import save_checkpoint
from facekd.data import load_split
from facekd.evaluation import evaluate
from facekd.files import check_output_file, load_checkpoint
from facekd.inference import normalize
from facekd.models import build_model, load_model, refuse_non_finite
from facekd.registry import CHECKPOINT_FORMATS

BACKEND = "x86"
CALIBRATION_IMAGES = 256
CALIBRATION_BATCH = 8


class Int8Student(nn.Module):
    """An FX-quantized student: its int8 graph, the input size it predicts at, and the fp32
    architecture it came from, which gives its parameter and MAC counts (the int8 graph packs
    its weights, so it has no nn.Parameters to count)."""

    cpu_only = True  # fbgemm/oneDNN int8 kernels: facekd.distributed.device_for keeps it off a GPU

    def __init__(self, graph: nn.Module, model_cfg: dict):
        super().__init__()
        self.graph = graph
        self.model_cfg = dict(model_cfg)
        self.input_size = int(model_cfg["input_size"])

    def forward(self, x):
        return self.graph(x)

    @property
    def float_model(self) -> nn.Module:
        """A freshly built fp32 student of the same architecture (random weights): what the
        challenge counts, and what MACs are counted on."""
        return build_model(self.model_cfg, allow_over_budget=True).eval()


def _fx_graph(model: nn.Module, calibration: torch.Tensor | None) -> nn.Module:
    """prepare_fx, calibrate on `calibration` (normalised images; None leaves the observers
    empty, for a graph whose state dict is loaded next), convert_fx."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.backends.quantized.engine = BACKEND
    example = torch.zeros(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch announces FX mode's move to torchao on every call
        prepared = prepare_fx(copy.deepcopy(model).cpu().eval(), get_default_qconfig_mapping(BACKEND), (example,))
        if calibration is not None:
            with torch.no_grad():
                for i in range(0, len(calibration), CALIBRATION_BATCH):
                    prepared(calibration[i:i + CALIBRATION_BATCH])
        return convert_fx(prepared)


@CHECKPOINT_FORMATS.register("quantized")
def int8_model(ckpt: dict, source) -> Int8Student:
    """The Int8Student a quantized checkpoint holds (facekd.models.load_model comes here for a
    checkpoint marked "quantized"); a state dict that does not fit its model_cfg is an error
    naming the file."""
    fp32 = build_model(ckpt["model_cfg"], allow_over_budget=True)
    model = Int8Student(_fx_graph(fp32, None), ckpt["model_cfg"])
    try:
        model.graph.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{source}: int8 weights do not match their model_cfg ({e})") from e
    return model.eval()


def calibration_batch(data_root, size: int, n: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """The first n training images at the model's input size, normalised: train, never val."""
    train = load_split(data_root, "train", size, limit=n, show_progress=False)
    return normalize(train.images)


def score_both(fp32: nn.Module, int8: Int8Student, data_root, flip_tta: bool,
               fp32_val_fscore: float | None = None) -> dict:
    """val F of the fp32 student and of its int8 model, scored side by side on the same split;
    the fp32 one is not scored again when the caller gives it."""
    val = load_split(data_root, "val", None, show_progress=False)
    score = lambda m: evaluate(m, val, m.input_size, flip_tta)["fscore"]
    return {"fp32_val_fscore": score(fp32) if fp32_val_fscore is None else fp32_val_fscore, "val_fscore": score(int8)}


def quantize_checkpoint(checkpoint, out, data_root, n_images: int = CALIBRATION_IMAGES,
                        flip_tta: bool = True, fp32_val_fscore: float | None = None) -> dict:
    """Quantize a shippable student checkpoint into `out`; returns the checkpoint's metadata.
    A teacher, an over-limit student or an unwritable `out` is refused before any work.
    `fp32_val_fscore`: the checkpoint's own val F (same split, same flip_tta) when the caller
    has scored it already, as a benchmark pairing it with other models has."""
    checkpoint, out = Path(checkpoint), Path(out)
    check_output_file(out)
    if out.resolve() == checkpoint.resolve():
        raise ValueError(f"--out {out}: would overwrite the fp32 checkpoint it quantizes")
    if n_images < 1:
        raise ValueError(f"--calibration-images {n_images}: give at least one")
    ckpt = load_checkpoint(checkpoint)
    model = load_model(ckpt, checkpoint, student_for="quantize")  # a teacher, or an int8 model, is refused by name
    refuse_non_finite(model, checkpoint, "quantized")  # calibrating NaN weights failed deep in torch.histc
    n_params = count_params(model)
    if n_params >= PARAM_LIMIT:
        raise ValueError(f"{checkpoint}: has {n_params:,} trainable parameters; the challenge needs fewer than "
                         f"{PARAM_LIMIT:,} (prune it first)")
    calibration = calibration_batch(data_root, model.input_size, n_images)
    int8 = Int8Student(_fx_graph(model, calibration), ckpt["model_cfg"])
    meta = {"model_cfg": dict(ckpt["model_cfg"]), "params": n_params, "source": str(checkpoint), "stage": "int8",
            "quantized": {"scheme": "static int8, FX graph mode", "backend": BACKEND,
                          "calibration": {"split": "train", "images": len(calibration), "data_root": str(data_root)}},
            **score_both(model, int8, data_root, flip_tta, fp32_val_fscore)}
    save_checkpoint({"model": int8.graph.state_dict(), **meta}, out)
    return meta
