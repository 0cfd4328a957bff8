"""Small stand-ins for zoo architectures, built from the same blocks (for tests and ``--arch``).

torchvision and timm do not always install beside a given torch build, so the building blocks
their models are made of are reproduced here at toy size: ResNet bottlenecks with
squeeze-and-excitation (Hu et al., 2018), MobileNetV2 inverted residuals with depthwise convs
(Sandler et al., 2018), grouped convs (ResNeXt). Depthwise and grouped convs cannot hold an
N:M pattern along a reduction axis of 1 (or of ``in/groups``) and are reported as skipped;
the 1x1 convs around them carry most of the MACs and are sparsified.

``sparsify_cli.samples.zoo:TokenAndFeatures`` takes two inputs (float features and int64 token
ids), for ``--input``. Every factory takes no arguments, as ``--arch`` requires.
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Channel gates from globally pooled features: two 1x1 convs, ReLU, sigmoid."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(torch.relu(self.reduce(self.pool(x))))
        return x * torch.sigmoid(gate)


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 grouped -> 1x1 expand, SE, projection shortcut when shapes change."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, mid)
        self.conv2 = _conv_bn(mid, mid, 3, stride, groups)
        self.conv3 = _conv_bn(mid, cout)
        self.se = SqueezeExcite(cout, cout // 4)
        self.shortcut = (
            _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y))
        y = self.se(self.conv3(y))
        return torch.relu(y + self.shortcut(x))


class TinySEResNeXt(nn.Module):
    """ResNeXt/SE-ResNet-style classifier for ``[B, 3, 32, 32]`` images."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 32, 3), nn.ReLU())
        self.layer1 = Bottleneck(32, 32, 64, 1, groups=4)
        self.layer2 = Bottleneck(64, 64, 128, 2, groups=8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer2(self.layer1(self.stem(x)))).flatten(1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, SE, 1x1 linear projection (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(_conv_bn(cin, mid), nn.ReLU6())
        self.depthwise = nn.Sequential(_conv_bn(mid, mid, 3, stride, groups=mid), nn.ReLU6())
        self.se = SqueezeExcite(mid, mid // 4)
        self.project = _conv_bn(mid, cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.skip else y


class TinyMobileNet(nn.Module):
    """MobileNetV2/V3-style classifier for ``[B, 3, 32, 32]`` images."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 16, 3, 2), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 4),
            InvertedResidual(16, 32, 2, 4),
            InvertedResidual(32, 32, 1, 4),
        )
        self.head = nn.Sequential(_conv_bn(32, 128), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.head(self.blocks(self.stem(x)))).flatten(1))


class TokenAndFeatures(nn.Module):
    """Two inputs: float features ``[B, 16]`` and token ids ``[B, 8]`` in ``[0, 50)``."""

    def __init__(self, vocab: int = 50, num_classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.features = nn.Linear(16, 32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.out = nn.Linear(32, num_classes)

    def forward(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h = self.features(features) + self.embed(ids).mean(1)
        return self.out(h + self.mlp(h))
