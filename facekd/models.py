"""Models from plain config: build one by name or from its config, and turn a checkpoint's
dict (facekd.checkpoint.load_checkpoint) into a model with its weights.

The architectures and checkpoint formats come from the registry (facekd/registry.py), whose
first lookup imports the plugins that fill it (`students`, `teachers`, `compress.quantize`):
importing this module is all a caller needs. It ships with the exported solution, so it
imports nothing beyond torch and the shipped core modules.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from facekd import challenge
from facekd.files import one_line
from facekd.labels import NUM_CLASSES
from facekd.registry import CHECKPOINT_FORMATS, STUDENT_ARCHS, STUDENTS, TEACHER_ARCHS, TEACHERS


def named_config(name: str, input_size: int) -> dict:
    """The plain config of a registered student or teacher, predicting at input_size."""
    if name in STUDENTS:
        return {**STUDENTS[name](), "input_size": input_size}
    if name in TEACHERS:
        return {**TEACHERS[name](), "input_size": input_size}
    raise ValueError(f"unknown model {name!r}; teachers: {TEACHERS.names()}, students: {STUDENTS.names()}")


def init_model(cfg) -> tuple[nn.Module, dict]:
    """The freshly initialised model a RunConfig names (cfg.model), predicting at its last
    training size, and its plain config. The initial weights follow cfg.seed."""
    model_cfg = named_config(cfg.model, cfg.resolutions[-1][0])
    torch.manual_seed(cfg.seed)
    return build_model(model_cfg), model_cfg


def is_teacher(model_cfg: dict) -> bool:
    return model_cfg.get("arch") in TEACHER_ARCHS


def build_model(model_cfg: dict, allow_over_budget: bool = False) -> nn.Module:
    """A freshly initialised model from its plain config. A student at or above the challenge
    limit is refused unless its config says `over_budget=True` (a wide student meant to be
    pruned) or the caller allows it (rebuilding a checkpoint as it was trained)."""
    cfg = dict(model_cfg)
    arch = cfg.pop("arch", None)
    if arch in TEACHER_ARCHS:
        return TEACHER_ARCHS[arch](**cfg)
    allow_over_budget = cfg.pop("over_budget", False) or allow_over_budget
    model = STUDENT_ARCHS[arch](**cfg)
    n = challenge.count_params(model)
    if n >= challenge.PARAM_LIMIT and not allow_over_budget:
        raise ValueError(f"student {arch} has {n:,} trainable parameters, over the challenge limit "
                         f"(< {challenge.PARAM_LIMIT:,}); mark a wide student to prune with over_budget=True")
    return model


def checkpoint_format(ckpt: dict) -> str | None:
    """The registered format a checkpoint is marked with ("quantized"), or None for plain fp32
    weights."""
    return next((key for key in CHECKPOINT_FORMATS if ckpt.get(key)), None)


def refuse_other_format(ckpt: dict, source, needs: str) -> None:
    """The one refusal of a checkpoint that is not plain fp32 weights, where `needs` says what
    the command would do with them ("prune", "distil from", ...): one line naming the file."""
    marked = checkpoint_format(ckpt)
    if marked:
        raise ValueError(f"{source}: is a {marked} checkpoint; {needs} its fp32 source ({ckpt.get('source')})")


def load_model(ckpt: dict, source="checkpoint", student_for: str | None = None,
               fp32_for: str | None = None) -> nn.Module:
    """The model a checkpoint dict holds, in eval mode on the CPU, rebuilt as it was trained
    (an over-limit student too: export is where the limit is enforced). A config or weights
    that do not fit are an error naming `source`, the file they came from. A command that
    works on a student names what it would do (`student_for`: "prune", "fine-tune", ...),
    and a teacher checkpoint is then refused; one that trains from the weights (`fp32_for`:
    "distil from"), as any that works on a student, refuses a quantized checkpoint."""
    cfg = ckpt["model_cfg"]
    if student_for and isinstance(cfg, dict) and is_teacher(cfg):
        raise ValueError(f"{source}: is a teacher checkpoint; {student_for} a student")
    if student_for or fp32_for:
        refuse_other_format(ckpt, source, student_for or fp32_for)
    marked = checkpoint_format(ckpt)
    if marked:
        return CHECKPOINT_FORMATS[marked](ckpt, source)
    return _fp32_model(ckpt, source)


def _fp32_model(ckpt: dict, source) -> nn.Module:
    cfg = ckpt["model_cfg"]
    classes = cfg.get("num_classes", NUM_CLASSES) if isinstance(cfg, dict) else None
    if classes != NUM_CLASSES:
        raise ValueError(f"{source}: predicts {classes} classes; facekd models predict the {NUM_CLASSES} "
                         "CelebAMask-HQ classes")
    try:
        model = build_model(cfg, allow_over_budget=True)
    except (KeyError, TypeError, ValueError) as e:  # an unknown arch or a field its class does not take
        raise ValueError(f"{source}: its model_cfg cannot be built ({one_line(e)})") from e
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{source}: weights do not match their model_cfg ({one_line(e)})") from e
    return model.eval()


def refuse_non_finite(model: nn.Module, source, cannot_be: str) -> None:
    """Refuse weights holding inf or NaN, before any work on them (export, quantize), naming
    `source` and what cannot be done (`cannot_be`: "shipped", "quantized")."""
    broken = [name for name, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
    if broken:
        raise ValueError(f"{source}: {len(broken)} weight tensor(s) hold inf or NaN (e.g. {broken[0]}); "
                         f"its training diverged, so it cannot be {cannot_be}")


def shippable_student(ckpt: dict, source) -> tuple[nn.Module, int]:
    """Rebuild the checkpoint's model and refuse anything the challenge would reject.

    An over-limit student is rebuilt so that it is reported with its exact count, and its
    weights are loaded strictly so a config that does not match them fails here, not in run.py.
    """
    cfg = ckpt["model_cfg"]
    arch = cfg.get("arch")
    if is_teacher(cfg):
        raise ValueError(f"{source}: is a teacher ({arch}); only a distilled student can be shipped")
    refuse_other_format(ckpt, source, "run.py ships fp32 students, so export")
    if arch not in STUDENT_ARCHS:
        raise ValueError(f"{source}: arch {arch!r} is not a student arch ({STUDENT_ARCHS.names()})")
    if "input_size" not in cfg:
        raise ValueError(f"{source}: model_cfg has no input_size, which run.py needs")
    model = _fp32_model(ckpt, source)
    refuse_non_finite(model, source, "shipped")
    n = challenge.count_params(model)
    if n >= challenge.PARAM_LIMIT:
        raise ValueError(f"{source}: {arch} has {n:,} trainable parameters; the challenge needs fewer than "
                         f"{challenge.PARAM_LIMIT:,} (prune it first)")
    return model, n
