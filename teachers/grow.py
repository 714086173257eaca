"""Grow a trained ResFPN student into a larger teacher that computes the same function
(Net2Net: Chen, Goodfellow and Shlens, ICLR 2016), so that the teacher starts at the
student's score instead of spending hours catching up from scratch.

Two function-preserving moves:
- deeper: a new residual block at the end of a stage whose last BatchNorm has weight and
  bias 0 adds nothing to its input, and the input already went through a ReLU, so the
  block is the identity (the zero-init-residual trick of Goyal et al., 2017);
- wider: a block's inner channels (between conv1 and conv2), the stem's first channels and
  the head's channels are copied to fill the new width, and the next layer's weights that
  read a copied channel are split among its copies. The shares sum to one, so the next
  layer's input is unchanged; they are drawn unequal, so that the copies get different
  gradients and do not stay twins.

The residual stream and the FPN's width stay as they are: every stage's output feeds a
skip, the next stage and a lateral, and the inner channels are where the parameters are.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from facekd.checkpoint import save_checkpoint
from facekd.challenge import count_params
from facekd.files import load_checkpoint
from facekd.models import load_model
from facekd.registry import register_teacher_arch
from students.resfpn import ResFPN


@register_teacher_arch("resfpn_grown")
class GrownResFPN(ResFPN):
    """A ResFPN grown from a student: a teacher, so export and prune refuse it as one."""


def grown_config(student_cfg: dict, extra_depth: int | list[int], width_factor: float) -> dict:
    """The grown model's plain config: `extra_depth` more blocks in every stage (or one count
    per stage), and every inner width (blocks, stem, head) times `width_factor`, never
    narrower than before."""
    stages = len(student_cfg["depths"])
    extra = [extra_depth] * stages if isinstance(extra_depth, int) else list(extra_depth)
    if len(extra) != stages or min(extra) < 0 or not width_factor >= 1:
        raise ValueError(f"growth needs {stages} extra depths >= 0 and a width factor >= 1, "
                         f"got {extra_depth} and {width_factor}")
    wider = lambda c: max(c, round(c * width_factor))  # noqa: E731
    cfg = {key: value for key, value in student_cfg.items() if key != "arch"}
    mids = [[wider(m) for m in stage] + [wider(w)] * n
            for stage, w, n in zip(student_cfg["mid_widths"], student_cfg["widths"], extra)]
    return {**cfg, "arch": "resfpn_grown", "stem": [wider(cfg["stem"][0]), cfg["stem"][1]],
            "depths": [d + n for d, n in zip(cfg["depths"], extra)], "mid_widths": mids,
            "head_dim": wider(cfg["head_dim"])}


def _copies(old: int, new: int, generator: torch.Generator) -> torch.Tensor:
    """For each of `new` channels, the old channel it copies: itself for the first `old`."""
    return torch.cat([torch.arange(old), torch.randint(old, (new - old,), generator=generator)])


def _split_shares(source: torch.Tensor, old: int, generator: torch.Generator) -> torch.Tensor:
    """For each new channel, its share of its old channel's outgoing weights: unequal shares
    (within ±25% of an even split) that sum to exactly one over each old channel's copies."""
    raw = 1 + 0.5 * (torch.rand(len(source), generator=generator, dtype=torch.float64) - 0.5)
    total = torch.zeros(old, dtype=torch.float64).index_add_(0, source, raw)
    return raw / total[source]


def widen(producer: nn.Conv2d, norm: nn.BatchNorm2d, consumer: nn.Conv2d,
          new_producer: nn.Conv2d, new_norm: nn.BatchNorm2d, new_consumer: nn.Conv2d,
          generator: torch.Generator) -> None:
    """Fill the new, wider conv -> BN -> (ReLU) -> conv triple from the old one, so that the
    consumer's output is unchanged in eval mode."""
    old, new = producer.out_channels, new_producer.out_channels
    source = _copies(old, new, generator)
    shares = _split_shares(source, old, generator)
    with torch.no_grad():
        new_producer.weight.copy_(producer.weight[source])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_norm, name).copy_(getattr(norm, name)[source])
        weight = consumer.weight.double()[:, source] * shares.view(1, -1, 1, 1)
        new_consumer.weight.copy_(weight.to(consumer.weight.dtype))
        if consumer.bias is not None:
            new_consumer.bias.copy_(consumer.bias)


def _copy_module(old: nn.Module, new: nn.Module) -> None:
    new.load_state_dict(old.state_dict())


def grow(student: ResFPN, extra_depth: int | list[int] = 0, width_factor: float = 1.0,
         seed: int = 0) -> GrownResFPN:
    """A GrownResFPN that computes what `student` computes (in eval mode), to float rounding."""
    student_cfg = {"arch": "resfpn", **student.config_from_weights()}
    cfg = grown_config(student_cfg, extra_depth, width_factor)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the new blocks' first convs start from torch's default init
    grown = GrownResFPN(**{k: v for k, v in cfg.items() if k != "arch"})
    old_stem, new_stem = student.stem, grown.stem
    widen(old_stem[0][0], old_stem[0][1], old_stem[1][0], new_stem[0][0], new_stem[0][1], new_stem[1][0], generator)
    new_stem[1][1].load_state_dict(old_stem[1][1].state_dict())
    for old_stage, new_stage in zip(student.stages, grown.stages):
        for old_block, new_block in zip(old_stage, new_stage):
            widen(old_block.conv1[0], old_block.conv1[1], old_block.conv2[0],
                  new_block.conv1[0], new_block.conv1[1], new_block.conv2[0], generator)
            _copy_module(old_block.conv2[1], new_block.conv2[1])
            _copy_module(old_block.skip, new_block.skip)
        for added in list(new_stage)[len(old_stage):]:
            nn.init.zeros_(added.conv2[1].weight)  # the block's residual branch outputs 0: an identity
            nn.init.zeros_(added.conv2[1].bias)
    old_dec, new_dec = student.decoder, grown.decoder
    for name in ("laterals", "smooth"):
        _copy_module(getattr(old_dec, name), getattr(new_dec, name))
    widen(old_dec.head[0], old_dec.head[1], old_dec.classifier, new_dec.head[0], new_dec.head[1],
          new_dec.classifier, generator)
    return grown


def grow_checkpoint(student_path: str | Path, out: str | Path, extra_depth: int | list[int],
                    width_factor: float, seed: int = 0) -> dict:
    """Grow the student in `student_path` and save the grown teacher's checkpoint to `out`;
    `facekd train-teacher --init OUT` trains it. Returns what was written, less the weights."""
    ckpt = load_checkpoint(student_path)
    student = load_model(ckpt, student_path, student_for="grow")
    if type(student) is not ResFPN:
        raise ValueError(f"{student_path}: is a {ckpt['model_cfg'].get('arch')} student; growing needs a resfpn one")
    grown = grow(student, extra_depth, width_factor, seed)
    model_cfg = {"arch": "resfpn_grown", **grown.config_from_weights()}
    record = {"model_cfg": model_cfg, "stage": "grown", "params": count_params(grown),
              "student_params": count_params(student), "grown_from": str(student_path),
              "growth": {"extra_depth": extra_depth, "width_factor": width_factor, "seed": seed},
              # the grown model computes the student's function, so it scores what the student scored
              "val_fscore": ckpt.get("val_fscore"), "val_fscore_from": "the student it was grown from"}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": grown.state_dict(), **record}, out)
    return record
