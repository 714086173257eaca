"""UNetLite: a stride-2 stem, a residual encoder and a concat-skip decoder that stops at
stride 4. Each concat feeds a dense 1x1 conv first, so torch-pruning cuts its branches
consistently."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from facekd.registry import register_student_arch
from students.blocks import conv_bn_act, make_stage, run_stages


class DecoderBlock(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, fuse_ch: int, out_ch: int):
        super().__init__()
        self.fuse = conv_bn_act(in_ch + skip_ch, fuse_ch, 1)
        self.conv = conv_bn_act(fuse_ch, out_ch, 3)

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(self.fuse(torch.cat([x, skip], 1)))


@register_student_arch("unet")
class UNetLite(nn.Module):
    def __init__(self, stem=24, widths=(32, 64, 128, 192), depths=(1, 2, 2, 1), mid_widths=None,
                 decoder=(96, 64, 48), decoder_fuse=None, num_classes=19, input_size=512):
        super().__init__()
        mid_widths = mid_widths or [[w] * d for w, d in zip(widths, depths)]
        decoder_fuse = decoder_fuse or list(decoder)
        self.input_size = input_size
        self.stem = conv_bn_act(3, stem, 3, 2)
        in_chs = [stem, *widths[:-1]]
        self.stages = nn.ModuleList(
            make_stage(i, o, d, 2, m) for i, o, d, m in zip(in_chs, widths, depths, mid_widths))
        # decoder climbs from stride 32 to stride 4, taking skips at 16, 8 and 4
        dec_in = [widths[-1], *decoder[:-1]]
        skips = list(reversed(widths[:-1]))
        self.decoder = nn.ModuleList(
            DecoderBlock(i, s, f, o) for i, s, f, o in zip(dec_in, skips, decoder_fuse, decoder))
        self.classifier = nn.Conv2d(decoder[-1], num_classes, 1)

    def forward(self, x):
        feats = run_stages(self.stages, self.stem(x))
        x = feats[-1]
        for block, skip in zip(self.decoder, reversed(feats[:-1])):
            x = block(x, skip)
        return self.classifier(x)

    def config_from_weights(self) -> dict:
        return dict(
            stem=self.stem[0].out_channels,
            widths=[s[0].conv2[0].out_channels for s in self.stages],
            depths=[len(s) for s in self.stages],
            mid_widths=[[b.conv1[0].out_channels for b in s] for s in self.stages],
            decoder=[b.conv[0].out_channels for b in self.decoder],
            decoder_fuse=[b.fuse[0].out_channels for b in self.decoder],
            num_classes=self.classifier.out_channels,
            input_size=self.input_size,
        )
