import math

import pytest
import torch

from facekd.losses import channel_wise_kd_loss, pixel_kd_loss

# Golden value worked out by hand: teacher logits (0, ln 3) against a uniform student at
# T = 2. Softened teacher probabilities are a = 1/(1+sqrt 3) and 1 - a; KL to (1/2, 1/2),
# times T^2.
A = 1 / (1 + math.sqrt(3))
GOLDEN_T2 = 4 * (A * math.log(2 * A) + (1 - A) * math.log(2 * (1 - A)))


def test_pixel_kd_golden_value():
    teacher = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1).expand(1, 2, 3, 3)
    student = torch.zeros(1, 2, 3, 3)
    assert float(pixel_kd_loss(student, teacher, 2.0)) == pytest.approx(GOLDEN_T2, rel=1e-5)


def test_pixel_kd_ignores_invalid_pixels_and_is_zero_on_match():
    teacher = torch.randn(2, 19, 4, 4)
    assert float(pixel_kd_loss(teacher.clone(), teacher, 4.0)) == pytest.approx(0.0, abs=1e-6)
    student = teacher.clone()
    student[:, :, 0, 0] += 5 * torch.randn(2, 19)
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[:, 0, 0] = False
    assert float(pixel_kd_loss(student, teacher, 4.0, valid)) == pytest.approx(0.0, abs=1e-6)
    assert float(pixel_kd_loss(student, teacher, 4.0)) > 0.01


def test_channel_wise_kd_golden_value():
    # one channel over two spatial positions: the same two-way distribution as above
    teacher = torch.tensor([0.0, math.log(3)]).view(1, 1, 1, 2)
    student = torch.zeros(1, 1, 1, 2)
    assert float(channel_wise_kd_loss(student, teacher, 2.0)) == pytest.approx(GOLDEN_T2, rel=1e-5)


def test_channel_wise_kd_is_shift_invariant_per_channel():
    """A constant added to a whole channel moves no spatial distribution."""
    teacher = torch.randn(2, 19, 4, 4)
    student = teacher + torch.randn(2, 19, 1, 1)
    assert float(channel_wise_kd_loss(student, teacher, 1.0)) == pytest.approx(0.0, abs=1e-5)
    assert float(pixel_kd_loss(student, teacher, 1.0)) > 1e-3
