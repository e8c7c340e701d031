"""Stand-alone networks built from an :class:`~tasks.s3nas.space.Arch` (METHODS.md §8.3).

The searched net, the random-search winner and the hand-designed baseline are all trained
as these: MixConv blocks with their chosen branches (kernel k, expansion e per branch),
optional squeeze-and-excitation on the expanded channels, and h-swish once a net is
finished ("scale & add SE + h-swish"). Each SE records its excitation vectors on request,
for the selective SE removal that scores blocks by how much their excitation varies.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .space import Arch, Block


def activation(name: str) -> nn.Module:
    return nn.Hardswish() if name == "hswish" else nn.ReLU()


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, act: str):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.act = activation(act)
        self.recorded: list[Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))
        if self.recorded is not None:
            self.recorded.append(s.detach().flatten(1).float().cpu())
        return x * s


class MixConvBlock(nn.Module):
    def __init__(self, block: Block, se_ratio: float, act: str):
        super().__init__()
        self.block = block
        hidden = block.hidden()
        self.residual = block.residual
        self.expand = nn.Sequential(nn.Conv2d(block.c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), activation(act))
        self.splits = [block.c_in * b.expansion for b in block.branches if b.expansion]
        self.dw = nn.ModuleList(
            nn.Conv2d(c, c, b.kernel, block.stride, b.kernel // 2, groups=c, bias=False)
            for c, b in zip(self.splits, [b for b in block.branches if b.expansion]))
        self.dw_bn = nn.Sequential(nn.BatchNorm2d(hidden), activation(act))
        self.se = SqueezeExcite(hidden, block.se_channels(se_ratio), act) if block.se else None
        self.project = nn.Sequential(nn.Conv2d(hidden, block.c_out, 1, bias=False), nn.BatchNorm2d(block.c_out))

    def forward(self, x: Tensor) -> Tensor:
        h = self.expand(x)
        parts = torch.split(h, self.splits, 1)
        h = self.dw_bn(torch.cat([conv(p) for conv, p in zip(self.dw, parts)], 1))
        if self.se is not None:
            h = self.se(h)
        y = self.project(h)
        return x + y if self.residual else y


class ChildNet(nn.Module):
    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        act = arch.activation
        self.stem = nn.Sequential(nn.Conv2d(arch.in_channels, arch.stem_channels, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(arch.stem_channels), activation(act))
        self.blocks = nn.ModuleList(MixConvBlock(b, arch.se_ratio, act) for b in arch.active_blocks())
        c_last = arch.active_blocks()[-1].c_out if arch.active_blocks() else arch.stem_channels
        self.head = nn.Sequential(nn.Conv2d(c_last, arch.head_channels, 1, bias=False), nn.BatchNorm2d(arch.head_channels),
                                  activation(act))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(arch.head_channels, arch.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        x = self.head(x).mean((2, 3))
        return self.fc(self.dropout(x))

    def se_modules(self) -> list[tuple[int, SqueezeExcite]]:
        """(index among active blocks, SE) of every block that has one."""
        return [(i, b.se) for i, b in enumerate(self.blocks) if b.se is not None]


def without_se(model: ChildNet, arch_without: Arch) -> ChildNet:
    """A copy of ``model`` for an arch with some SEs removed; all other weights carried over."""
    new = ChildNet(arch_without)
    state = {k: v for k, v in model.state_dict().items() if ".se." not in k}
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not unexpected and all(".se." in k for k in missing), (missing, unexpected)
    return new
