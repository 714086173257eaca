"""One dataclass holds every knob of a run; presets and TOML files override it by key.

Overrides must name an existing field and match its type, so a typo in a config file is
an error rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunConfig:
    # data
    data: str = ""                      # "" = the embedded sample
    train_limit: int = 0                # use only the first N training pairs (0 = all)
    # model: a named teacher or student
    model: str = "resfpn"
    # schedule: [[size, epochs], ...] trained in order; the model predicts at the last size
    resolutions: list = field(default_factory=lambda: [[256, 1]])
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
    # loss weights; kd and cwd are used only when a teacher is given
    ce: float = 1.0
    dice: float = 0.0
    kd: float = 0.0
    cwd: float = 0.0
    temperature: float = 4.0
    # evaluation and logging
    eval_every: int = 1
    flip_tta: bool = True
    panel_every: int = 5                # evaluations between TensorBoard image panels
    # hardware
    threads: int = 0                    # 0 = torch's default
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False               # under torchrun on GPUs: BatchNorm statistics over all ranks' batches

    @property
    def epochs(self) -> int:
        return sum(e for _, e in self.resolutions)

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


def apply_overrides(cfg: RunConfig, overrides: dict, source: str = "overrides") -> RunConfig:
    names = {f.name for f in dataclasses.fields(RunConfig)}
    checked = {}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"{source}: unknown config key {key!r}")
        checked[key] = _check_type(key, value, getattr(cfg, key))
    if "resolutions" in checked:
        r = checked["resolutions"]
        if not r or not all(isinstance(x, list) and len(x) == 2 and all(isinstance(v, int) for v in x) for x in r):
            raise ValueError(f"{source}: resolutions must be [[size, epochs], ...] of integers")
    return dataclasses.replace(cfg, **checked)


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML ({e})") from None


# Presets per stage. smoke: the embedded sample in well under two minutes. cpu: sized for
# this 2-core machine (see docs/RESULTS.md for what each reached). gpu: the 512 recipe.
PRESETS = {
    "teacher": {
        "smoke": dict(model="teacher_tiny", resolutions=[[128, 6]], batch_size=4, eval_every=2, warmup_epochs=0.5),
        "cpu": dict(model="teacher_cpu", resolutions=[[256, 12], [384, 2]], batch_size=8, lr=2e-3,
                    dice=0.5, eval_every=4),
        "gpu": dict(model="teacher_gpu", resolutions=[[512, 120]], batch_size=16, lr=1e-3, dice=0.5,
                    ema_decay=0.999, eval_every=5),
    },
    "distill": {
        "smoke": dict(model="tiny", resolutions=[[128, 6]], batch_size=4, eval_every=2, warmup_epochs=0.5,
                      kd=1.0, cwd=1.0),
        # CWD beat pixel KD and no KD on val (docs/RESULTS.md, student runs b and c)
        "cpu": dict(model="resfpn", resolutions=[[256, 12], [384, 3]], batch_size=8, lr=3e-3, dice=0.5,
                    kd=0.0, cwd=1.0, eval_every=3),
        "gpu": dict(model="resfpn", resolutions=[[512, 200]], batch_size=16, lr=2e-3, dice=0.5, kd=1.0,
                    cwd=1.0, ema_decay=0.999, eval_every=5),
    },
    "prune": {
        "smoke": dict(resolutions=[[128, 1]], batch_size=4, eval_every=1, warmup_epochs=0.2, kd=1.0),
        "cpu": dict(resolutions=[[384, 3]], batch_size=8, lr=1e-3, dice=0.5, kd=1.0, eval_every=1,
                    warmup_epochs=0.2),
        "gpu": dict(resolutions=[[512, 40]], batch_size=16, lr=5e-4, dice=0.5, kd=1.0, ema_decay=0.999,
                    eval_every=5),
    },
}


def resolve_config(stage: str, preset: str, config_file: str | None = None, **cli_overrides) -> RunConfig:
    """Defaults, then the stage's preset, then a TOML file, then explicit CLI values."""
    if preset not in PRESETS[stage]:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS[stage])}")
    cfg = apply_overrides(RunConfig(), PRESETS[stage][preset], f"preset {preset}")
    if config_file:
        cfg = apply_overrides(cfg, load_toml(config_file), str(config_file))
    return apply_overrides(cfg, {k: v for k, v in cli_overrides.items() if v is not None}, "command line")


def save_config(cfg: RunConfig, run_dir: Path, extra: dict | None = None) -> None:
    (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), **(extra or {})}, indent=2) + "\n")
