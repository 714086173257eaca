"""Building blocks shared by the student families. Plain dense convs: on a 2-core CPU a
dense 3x3 conv runs far closer to peak than a depthwise one of the same FLOPs."""

import torch.nn as nn


def conv_bn_act(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block. Whether the skip has a 1x1 projection is an explicit flag, not
    inferred from the widths, so a pruned width vector can never change the structure."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, mid_ch: int | None = None, project: bool = False):
        super().__init__()
        mid_ch = mid_ch or out_ch
        self.conv1 = conv_bn_act(in_ch, mid_ch, 3, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(mid_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.skip = nn.Identity()
        if project:
            self.skip = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


def make_stage(in_ch: int, out_ch: int, depth: int, stride: int, mid_chs: list[int] | None = None) -> nn.Sequential:
    mid_chs = mid_chs or [out_ch] * depth
    blocks = [BasicBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, mid_chs[i], project=i == 0)
              for i in range(depth)]
    return nn.Sequential(*blocks)


def run_stages(stages: nn.ModuleList, x):
    """Apply the stages in turn, keeping each stage's output for the decoder."""
    feats = []
    for stage in stages:
        x = stage(x)
        feats.append(x)
    return feats
