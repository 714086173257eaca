"""Larger from-scratch teachers: a timm encoder (never pretrained) plus an FPN decoder.
Importing this package registers them (facekd/registry.py)."""

from facekd.registry import register_teacher
from teachers import grow as _grow, timm_fpn as _timm_fpn  # noqa: F401  (they register their architectures)


@register_teacher("teacher_tiny")
def tiny_teacher() -> dict:
    """For tests."""
    return dict(arch="timm_fpn", encoder="test_resnet", fpn_dim=16, head_dim=16)


@register_teacher("teacher_cpu")
def cpu_teacher() -> dict:
    return dict(arch="timm_fpn", encoder="resnet10t", fpn_dim=96, head_dim=64)


@register_teacher("teacher_gpu")
def gpu_teacher() -> dict:
    return dict(arch="timm_fpn", encoder="resnet50d", fpn_dim=256, head_dim=128)
