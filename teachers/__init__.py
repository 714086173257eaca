"""Larger from-scratch teachers: a timm encoder (never pretrained) plus an FPN decoder."""

from teachers.timm_fpn import TimmFPN

ARCHS = {"timm_fpn": TimmFPN}

TEACHERS = {
    "teacher_tiny": dict(arch="timm_fpn", encoder="test_resnet", fpn_dim=16, head_dim=16),  # tests
    "teacher_cpu": dict(arch="timm_fpn", encoder="resnet10t", fpn_dim=96, head_dim=64),
    "teacher_gpu": dict(arch="timm_fpn", encoder="resnet50d", fpn_dim=256, head_dim=128),
}
