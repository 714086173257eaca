"""A light FPN decoder that fuses every level at the finest feature's stride (4).

Shared by the ResFPN student and the teachers, so both decode the same way.
"""

import torch.nn as nn
import torch.nn.functional as F

from students.blocks import conv_bn_act


class FPNDecoder(nn.Module):
    def __init__(self, in_chs, fpn_dim: int, head_dim: int, num_classes: int):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, fpn_dim, 1) for c in in_chs)
        # 3x3 smoothing runs at each coarse level's own resolution, where it is cheap;
        # only the single head conv pays the stride-4 price.
        self.smooth = nn.ModuleList(conv_bn_act(fpn_dim, fpn_dim) for _ in in_chs[1:])
        self.head = conv_bn_act(fpn_dim, head_dim)
        self.classifier = nn.Conv2d(head_dim, num_classes, 1)

    def forward(self, feats):
        p = self.laterals[-1](feats[-1])
        pyramid = [p]
        for lateral, f in zip(reversed(self.laterals[:-1]), reversed(feats[:-1])):
            p = lateral(f) + F.interpolate(p, size=f.shape[-2:], mode="nearest")
            pyramid.append(p)
        pyramid.reverse()  # finest first
        size = pyramid[0].shape[-2:]
        fused = pyramid[0]
        for smooth, p in zip(self.smooth, pyramid[1:]):
            fused = fused + F.interpolate(smooth(p), size=size, mode="bilinear", align_corners=False)
        return self.classifier(self.head(fused))
