"""Build any facekd model, teacher or student, from its plain config."""

from __future__ import annotations

import torch.nn as nn

import students
import teachers


def named_config(name: str, input_size: int) -> dict:
    if name in students.STUDENTS:
        return {**students.STUDENTS[name], "input_size": input_size}
    if name in teachers.TEACHERS:
        return {**teachers.TEACHERS[name], "input_size": input_size}
    raise ValueError(f"unknown model {name!r}; teachers: {sorted(teachers.TEACHERS)}, "
                     f"students: {sorted(students.STUDENTS)}")


def is_teacher(model_cfg: dict) -> bool:
    return model_cfg.get("arch") in teachers.ARCHS


def build_model(model_cfg: dict, allow_over_budget: bool = False) -> nn.Module:
    if is_teacher(model_cfg):
        cfg = dict(model_cfg)
        return teachers.ARCHS[cfg.pop("arch")](**cfg)
    return students.build_student(model_cfg, allow_over_budget=allow_over_budget)
