"""Distillation losses on logits, as plain functions.

Both take student and teacher logits of the same shape BxCxHxW; the caller resizes the
teacher's logits to the student's output size.
"""

import torch
import torch.nn.functional as F


def pixel_kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel KL(teacher || student) between temperature-softened class distributions,
    averaged over valid pixels and scaled by T^2 so its gradient does not shrink with T."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    log_p_t = F.log_softmax(teacher / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)  # BxHxW
    if valid is not None:
        kl = kl[valid]
    return kl.mean() * temperature ** 2


def channel_wise_kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                         valid: torch.Tensor | None = None) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021): each class channel becomes a
    distribution over spatial positions, and the student matches the teacher's by KL.
    It stresses where each class is most confident rather than every pixel equally.
    With a BxHxW `valid` mask the distributions are over the valid positions only."""
    b, c = student.shape[:2]
    student, teacher = student / temperature, teacher / temperature
    if valid is not None:
        # pushing a position's logits far below any real one gives it zero probability on both
        # sides, hence zero KL and zero gradient there, without the NaNs that -inf would make;
        # one broadcast add is cheaper on CPU than masked_fill's forward and backward
        outside = (~valid).unsqueeze(1).to(student.dtype) * -1e4
        student, teacher = student + outside, teacher + outside
    log_p_s = F.log_softmax(student.reshape(b * c, -1), dim=1)
    log_p_t = F.log_softmax(teacher.reshape(b * c, -1), dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)  # one value per (sample, channel)
    return kl.mean() * temperature ** 2
