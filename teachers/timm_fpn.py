"""A timm encoder from `features_only=True` with the students' FPN decoder on top."""

import timm
import torch.nn as nn

from facekd.registry import register_teacher_arch
from students.fpn import FPNDecoder


@register_teacher_arch("timm_fpn")
class TimmFPN(nn.Module):
    def __init__(self, encoder: str = "resnet18d", fpn_dim: int = 128, head_dim: int = 96,
                 num_classes: int = 19, input_size: int = 512):
        super().__init__()
        self.input_size = input_size
        # pretrained=False is the rule of the challenge: everything is learnt from the 1000 pairs
        self.encoder = timm.create_model(encoder, pretrained=False, features_only=True)
        # decode from stride 4 up: stride-2 features are costly and add little at 512
        info = self.encoder.feature_info
        self.levels = [i for i, r in enumerate(info.reduction()) if r >= 4]
        self.decoder = FPNDecoder([info.channels()[i] for i in self.levels], fpn_dim, head_dim, num_classes)

    def forward(self, x):
        feats = self.encoder(x)
        return self.decoder([feats[i] for i in self.levels])
