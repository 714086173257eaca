"""ResFPN: stride-4 stem, residual stages at strides 4-32, an FPN fused at stride 4.

Every width is a plain integer in the constructor, including each block's inner width,
so a width vector produced by a pruner rebuilds the same architecture.
"""

import torch.nn as nn

from facekd.registry import register_student_arch
from students.blocks import conv_bn_act, make_stage, run_stages
from students.fpn import FPNDecoder


@register_student_arch("resfpn")
class ResFPN(nn.Module):
    def __init__(self, stem=(16, 32), widths=(32, 64, 128, 160), depths=(2, 2, 2, 2), mid_widths=None,
                 fpn_dim=64, head_dim=64, num_classes=19, input_size=512):
        super().__init__()
        mid_widths = mid_widths or [[w] * d for w, d in zip(widths, depths)]
        self.input_size = input_size
        self.stem = nn.Sequential(conv_bn_act(3, stem[0], 3, 2), conv_bn_act(stem[0], stem[1], 3, 2))
        in_chs = [stem[1], *widths[:-1]]
        self.stages = nn.ModuleList(
            make_stage(i, o, d, 1 if k == 0 else 2, m)
            for k, (i, o, d, m) in enumerate(zip(in_chs, widths, depths, mid_widths)))
        self.decoder = FPNDecoder(widths, fpn_dim, head_dim, num_classes)

    def forward(self, x):
        return self.decoder(run_stages(self.stages, self.stem(x)))

    def config_from_weights(self) -> dict:
        """The constructor arguments that match the current (possibly pruned) weights."""
        return dict(
            stem=[self.stem[0][0].out_channels, self.stem[1][0].out_channels],
            widths=[s[0].conv2[0].out_channels for s in self.stages],
            depths=[len(s) for s in self.stages],
            mid_widths=[[b.conv1[0].out_channels for b in s] for s in self.stages],
            fpn_dim=self.decoder.laterals[0].out_channels,
            head_dim=self.decoder.head[0].out_channels,
            num_classes=self.decoder.classifier.out_channels,
            input_size=self.input_size,
        )
