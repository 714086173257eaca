"""One dataclass holds every knob of a run; presets and TOML files override it by key.

Overrides must name an existing field and match its type, so a typo in a config file is
an error rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from facekd.budget import MAX_BUDGET_MINUTES
from facekd.precision import PRECISIONS


@dataclass
class RunConfig:
    # data (the root itself is the command's --data, recorded with the run beside this config)
    train_limit: int = 0                # use only the first N training pairs (0 = all)
    # model: a named teacher or student
    model: str = "resfpn"
    # schedule: [[size, epochs], ...] trained in order; the model predicts at the last size
    resolutions: list = field(default_factory=lambda: [[256, 1]])
    # > 0: train for this many minutes of wall time instead of a fixed number of epochs; the
    # epochs above then only weigh the resolution phases and the warm-up (facekd/budget.py)
    budget_minutes: float = 0.0
    batch_size: int = 8
    lr: float = 2e-3
    min_lr_ratio: float = 0.02
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0
    ema_decay: float = 0.0              # 0 = no EMA; otherwise the EMA weights are evaluated and exported
    seed: int = 0
    # augmentation
    flip: float = 0.5
    scale_min: float = 0.8
    scale_max: float = 1.25
    rotate_deg: float = 15.0
    shift: float = 0.08
    jitter: float = 0.25
    # > 0: images holding a class found in fewer than this share of the training images are
    # drawn more often (repeat-factor sampling, facekd/sampling.py); 0 = each image once per epoch
    repeat_threshold: float = 0.0
    # Every loss's weight, keyed by its registered name (facekd/losses.py: "ce", "dice", "kd",
    # "cwd", "dist", or a plugin's); absent or 0 is off. The distillation losses act only when
    # a teacher is given. `--set kd_weight=1`, a TOML key `kd_weight = 1` or a table
    # `loss_weights = {kd = 1}` set one weight each and keep the others (translate_loss_weights).
    loss_weights: dict = field(default_factory=lambda: {"ce": 1.0})
    dice_scope: str = "batch"           # "image": Dice per image over its own classes, as the score counts
    temperature: float = 4.0
    # "online" runs the teacher on every step; "offline" runs it once per training image before
    # training (flip TTA, averaged over soft_target_scales x its input size) and warps the stored
    # logits with each batch (distill/soft_targets.py)
    distill_mode: str = "online"
    # where the teacher losses compare: "output", the student's own logits (stride 4 for the
    # students here) with the teacher's resized to them; "labels", both upsampled to the
    # labels' size, where CE and Dice already compare (a finer grid, 16x the pixels)
    teacher_term_size: str = "output"
    soft_target_scales: list = field(default_factory=lambda: [1.0])
    soft_target_cache: str = ""         # a folder that keeps offline targets across runs; "" = memory only
    # evaluation and logging
    eval_every: int = 1
    flip_tta: bool = True
    panel_every: int = 5                # evaluations between TensorBoard image panels
    # hardware
    threads: int = 0                    # 0 = torch's default
    channels_last: bool = True
    compile: bool = False
    # forward passes in "bf16" (autocast) or "fp32"; "auto" = bf16 where the hardware has bf16
    # arithmetic (CUDA; x86 CPUs with AVX512-BF16 or AMX), fp32 elsewhere (facekd/precision.py)
    precision: str = "auto"
    sync_bn: bool = False               # under torchrun on GPUs: BatchNorm statistics over all ranks' batches

    def __post_init__(self):
        # inf and nan pass every comparison below that they should fail (nan < 0 is False)
        infinite = [f.name for f in dataclasses.fields(self)
                    if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name))]
        if infinite:
            raise ValueError("; ".join(f"{name} must be a finite number, got {getattr(self, name)}"
                                       for name in infinite))
        problems = [f"{name} {why}" for name, bad, why in (
            ("batch_size", self.batch_size < 2, "must be at least 2 (BatchNorm cannot train on one image)"),
            ("lr", not self.lr > 0, "must be positive"),
            ("min_lr_ratio", not 0 <= self.min_lr_ratio <= 1, "must be in [0, 1]"),
            ("weight_decay", self.weight_decay < 0, "must not be negative"),
            ("warmup_epochs", self.warmup_epochs < 0, "must not be negative"),
            ("grad_clip", self.grad_clip < 0, "must not be negative (0 turns clipping off)"),
            ("ema_decay", not 0 <= self.ema_decay < 1, "must be in [0, 1)"),
            ("budget_minutes", self.budget_minutes < 0, "must not be negative (0 means fixed epochs)"),
            ("budget_minutes", self.budget_minutes > MAX_BUDGET_MINUTES,
             f"must be at most {MAX_BUDGET_MINUTES} minutes (a week)"),
            ("train_limit", self.train_limit < 0, "must not be negative (0 means all pairs)"),
            ("flip", not 0 <= self.flip <= 1, "must be a probability in [0, 1]"),
            ("scale_min", not 0 < self.scale_min <= self.scale_max, "must be positive and at most scale_max"),
            ("repeat_threshold", not 0 <= self.repeat_threshold <= 1, "must be in [0, 1] (0 turns it off)"),
            ("temperature", not self.temperature > 0, "must be positive"),
            ("dice_scope", self.dice_scope not in ("batch", "image"), "must be 'batch' or 'image'"),
            ("distill_mode", self.distill_mode not in ("online", "offline"), "must be 'online' or 'offline'"),
            ("teacher_term_size", self.teacher_term_size not in ("output", "labels"), "must be 'output' or 'labels'"),
            ("precision", self.precision not in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
            ("soft_target_scales", not (isinstance(self.soft_target_scales, list) and self.soft_target_scales and all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < math.inf
                for s in self.soft_target_scales)), "must be a non-empty list of positive finite numbers"),
            ("eval_every", self.eval_every < 1, "must be at least 1"),
            ("panel_every", self.panel_every < 1, "must be at least 1"),
            ("threads", self.threads < 0, "must not be negative (0 means torch's default)"),
        ) if bad]
        phases_ok = isinstance(self.resolutions, list) and self.resolutions and all(
            isinstance(x, list) and len(x) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in x)
            for x in self.resolutions)
        if not phases_ok:
            problems.append("resolutions must be a non-empty list of [size, epochs] integer pairs")
        elif any(size < 32 or size % 32 or epochs < 1 for size, epochs in self.resolutions):
            problems.append("resolutions: every size must be a multiple of 32 (the students' deepest stride) "
                            f"and every phase at least 1 epoch, got {self.resolutions}")
        problems += self._loss_weight_problems()
        if problems:
            raise ValueError("; ".join(problems))
        # a weight of 0 is the loss left out: one spelling of "off", so that configs compare alike
        self.loss_weights = {name: float(value) for name, value in sorted(self.loss_weights.items()) if value != 0}

    def _loss_weight_problems(self) -> list[str]:
        """Each weight a finite number >= 0. Whether each name is a registered loss is
        facekd.losses.check_loss_names's to say: the losses register as torch-using modules
        are imported, and this module must not import torch."""
        if not isinstance(self.loss_weights, dict):
            return [f"loss_weights must be a table of loss weights, got {self.loss_weights!r}"]
        problems = []
        for name, value in self.loss_weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{name}_weight must be a finite number, got {value!r}")
            elif value < 0:
                problems.append(f"{name}_weight must not be negative")
        return problems

    @property
    def epochs(self) -> int:
        return sum(e for _, e in self.resolutions)

    def size_at_progress(self, progress: float) -> int:
        """The resolution phase at a share of a budget, each phase's epochs read as its share."""
        return self.size_at(min(int(progress * self.epochs), self.epochs - 1))

    def switches_after(self, progress: float) -> int:
        """How many times the resolution changes after the phase at a share of a budget."""
        sizes = [self.size_at(e) for e in range(min(int(progress * self.epochs), self.epochs - 1), self.epochs)]
        return sum(a != b for a, b in zip(sizes, sizes[1:]))

    def size_at(self, epoch: int) -> int:
        for size, n in self.resolutions:
            if epoch < n:
                return size
            epoch -= n
        return self.resolutions[-1][0]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(key: str, value, default):
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"config key {key!r} must be {type(default).__name__}, got {value!r}")
    return value


# Loss weights as configs first named them ("kd = 1"), before each had the name "kd_weight".
BARE_LOSS_KEYS = {"ce", "dice", "kd", "cwd"}


def translate_loss_weights(overrides: dict) -> dict:
    """The one place where every spelling of a loss weight becomes a loss_weights entry keyed
    by the loss's name: `kd_weight = 1` (a RunConfig field of its own until issue 35, and the
    `--set` spelling still), `kd = 1` (older TOML files), and loss_weights tables keyed
    `toy_weight` (config.json and checkpoints of before). Other keys pass unchanged."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    weights, rest = None, {}
    for key, value in overrides.items():
        if key == "loss_weights" and isinstance(value, dict):
            weights = {**(weights or {}), **{name.removesuffix("_weight"): v for name, v in value.items()}}
        elif key.endswith("_weight") and key not in fields or key in BARE_LOSS_KEYS:
            weights = {**(weights or {}), key.removesuffix("_weight"): value}
        else:
            rest[key] = value
    return rest if weights is None else {**rest, "loss_weights": weights}


def saved_config(saved: dict) -> dict:
    """A config as a run recorded it (config.json, last.pt, best.pt; any version), in today's
    keys. Only what it recorded: a field it predates is not filled in."""
    translated = translate_loss_weights(saved)
    if "loss_weights" in translated:
        translated["loss_weights"] = {name: float(v) for name, v in translated["loss_weights"].items() if v != 0}
    return translated


def config_from_saved(saved: dict) -> RunConfig:
    """The RunConfig a run recorded (its config.json, or a checkpoint's "config"): its loss
    weights replace the defaults' rather than add to them, and what it records beside its
    settings (data_root, teacher, ...) is left out."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return dataclasses.replace(RunConfig(), **{k: v for k, v in saved_config(saved).items() if k in names})


def apply_overrides(cfg: RunConfig, overrides: dict, source: str = "overrides") -> RunConfig:
    """cfg with `overrides` applied, each key a RunConfig field of the right type (or a loss
    weight in any spelling); a loss_weights table adds to cfg's weights, not replaces them."""
    names, checked = {f.name for f in dataclasses.fields(RunConfig)}, {}
    for key, value in translate_loss_weights(overrides).items():
        if key not in names:
            raise ValueError(f"{source}: unknown config key {key!r}")
        try:
            if key == "loss_weights" and isinstance(value, dict):
                value = {**cfg.loss_weights, **{name: _check_type(f"{name}_weight", weight, 0.0)
                                                for name, weight in value.items()}}
            checked[key] = _check_type(key, value, getattr(cfg, key))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
    try:
        return dataclasses.replace(cfg, **checked)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def parse_assignments(items: list[str] | None) -> dict:
    """`--set key=value` pairs, each value read as a TOML value (`lr=1e-3`,
    `resolutions=[[256,4]]`, `flip_tta=false`); a bare word is a string (`model=unet`)."""
    overrides = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected key=value")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        overrides[key.strip()] = value
    return overrides


# Settings a resumed run may change: they do not alter what has been trained so far.
RESUMABLE_CHANGES = {"threads", "eval_every", "panel_every", "budget_minutes", "soft_target_cache"}


def resume_conflicts(saved: dict, new: dict) -> list[str]:
    """'key: saved != new' for each setting that a resumed run may not change; `saved` as the
    run recorded it, in whichever version's keys."""
    saved = saved_config(saved)
    return [f"{k}: {saved[k]!r} != {new.get(k)!r}" for k in sorted(saved)
            if k not in RESUMABLE_CHANGES and k in new and saved[k] != new[k]]


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML ({e})") from None
    except UnicodeDecodeError as e:  # its message names a codec and a byte, not the file
        raise ValueError(f"{path}: not a TOML file: TOML is UTF-8 text, and byte {e.start} is not "
                         f"({e.reason})") from None


# Presets per stage. smoke: the embedded sample in well under two minutes. cpu: sized for a
# 2-core CPU (docs/RESULTS.md says what each reached, and on which machine). gpu: the 512 recipe.
PRESETS = {
    "teacher": {
        "smoke": dict(model="teacher_tiny", resolutions=[[128, 6]], batch_size=4, eval_every=2, warmup_epochs=0.5),
        "cpu": dict(model="teacher_cpu", resolutions=[[256, 12], [384, 2]], batch_size=8, lr=2e-3, eval_every=4,
                    loss_weights=dict(ce=1.0, dice=0.5)),
        "gpu": dict(model="teacher_gpu", resolutions=[[512, 120]], batch_size=16, lr=1e-3, ema_decay=0.999,
                    eval_every=5, loss_weights=dict(ce=1.0, dice=0.5)),
    },
    "distill": {
        "smoke": dict(model="tiny", resolutions=[[128, 6]], batch_size=4, eval_every=2, warmup_epochs=0.5,
                      loss_weights=dict(ce=1.0, kd=1.0, cwd=1.0)),
        # CWD beat pixel KD and no KD on val (docs/RESULTS.md, "Which distillation loss?")
        "cpu": dict(model="resfpn", resolutions=[[256, 12], [384, 3]], batch_size=8, lr=3e-3, eval_every=3,
                    loss_weights=dict(ce=1.0, dice=0.5, cwd=1.0)),
        "gpu": dict(model="resfpn", resolutions=[[512, 200]], batch_size=16, lr=2e-3, ema_decay=0.999, eval_every=5,
                    loss_weights=dict(ce=1.0, dice=0.5, kd=1.0, cwd=1.0)),
    },
    "prune": {
        "smoke": dict(resolutions=[[128, 1]], batch_size=4, eval_every=1, warmup_epochs=0.2,
                      loss_weights=dict(ce=1.0, kd=1.0)),
        # CWD at T = 4 fine-tuned pruned students under the unpruned one where pixel KD lost
        # (docs/RESULTS.md, "The compression ladder")
        "cpu": dict(resolutions=[[384, 3]], batch_size=8, lr=1e-3, eval_every=1, warmup_epochs=0.2,
                    loss_weights=dict(ce=1.0, dice=0.5, cwd=1.0)),
        "gpu": dict(resolutions=[[512, 40]], batch_size=16, lr=5e-4, ema_decay=0.999, eval_every=5,
                    loss_weights=dict(ce=1.0, dice=0.5, kd=1.0)),
    },
}


def resolve_config(stage: str, preset: str, config_file: str | None = None, assignments: list[str] | None = None,
                   **cli_overrides) -> RunConfig:
    """Defaults, then the stage's preset, then a TOML file, then `--set key=value`s, then
    explicit CLI flags (--seed, --budget, ...)."""
    if preset not in PRESETS[stage]:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS[stage])}")
    cfg = apply_overrides(RunConfig(), PRESETS[stage][preset], f"preset {preset}")
    if config_file:
        cfg = apply_overrides(cfg, load_toml(config_file), str(config_file))
    cfg = apply_overrides(cfg, parse_assignments(assignments), "--set")
    cfg = apply_overrides(cfg, {k: v for k, v in cli_overrides.items() if v is not None}, "command line")
    from facekd.losses import check_loss_names  # here: it imports torch, which this module must not
    check_loss_names(cfg)  # before any work, not when the loss is built
    return cfg


def save_config(cfg: RunConfig, run_dir: Path, extra: dict | None = None) -> None:
    from facekd.files import naming_failed_writes  # here: it imports torch, which this module must not
    with naming_failed_writes(run_dir / "config.json"):
        (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), **(extra or {})}, indent=2) + "\n")
