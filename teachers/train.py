"""Stage 1: train a teacher with the shared engine, from scratch or from the weights of a
teacher grown from a student (teachers/grow.py)."""

from __future__ import annotations

from facekd.config import RunConfig
from facekd.engine import fit
from facekd.files import load_checkpoint
from facekd.losses import losses_trained, training_loss
from facekd.models import init_model, is_teacher, load_model


def train_teacher(cfg: RunConfig, data_root, out, resume: bool = False, show_progress: bool = True,
                  init: str | None = None) -> dict:
    """`init`: a teacher checkpoint (`facekd grow` writes one) whose model and weights the run
    starts from, instead of cfg.model freshly initialised."""
    extra = {"losses_trained": losses_trained(cfg, has_teacher=False)}
    if init is None:
        model, model_cfg = init_model(cfg)
    else:
        ckpt = load_checkpoint(init)
        if not is_teacher(ckpt["model_cfg"]):
            raise ValueError(f"--init {init}: is a student checkpoint; grow it into a teacher first (facekd grow)")
        model, model_cfg = load_model(ckpt, f"--init {init}").train(), ckpt["model_cfg"]
        extra |= {"init": str(init), "model_cfg": model_cfg}
    return fit(model, model_cfg, training_loss(cfg), cfg, out, data_root=data_root, stage="teacher",
               resume=resume, show_progress=show_progress, extra_config=extra,
               reference_scores={"init/val_fscore": ckpt["val_fscore"]} if init and ckpt.get("val_fscore") else None)
