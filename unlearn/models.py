"""Model architectures by name; input normalisation lives inside each model, as in the paper."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unlearn.errors import UnknownModelError

ARCHITECTURES = ("resnet18", "vgg16_bn", "digits_resnet")


class Normalize(nn.Module):
    """Per-channel (x - mean) / std, with the statistics stored as buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, inputs: Tensor) -> Tensor:
        return (inputs - self.mean) / self.std


class Classifier(nn.Module):
    """`normalize` then `net`: the shape every model here has."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, inputs: Tensor) -> Tensor:
        return self.net(self.normalize(inputs))


class _ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, inputs: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(inputs)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(inputs))


def digits_resnet(in_channels: int, num_classes: int, width: int = 32) -> nn.Module:
    """A small residual net for 8x8 images: stem, 8x8 block, 4x4 block, pooled linear head.

    About 120k parameters at width 32, so 95% conv sparsity still leaves ~6k conv weights.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        _ResidualBlock(width, width),
        _ResidualBlock(width, 2 * width, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


def resnet18(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: 3x3 stride-1 first conv, no max-pool."""
    # Imported here: torchvision.models pulls in torch._dynamo (~1.2 s), which every stage process
    # of the digits study would pay without using it.
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net


def vgg16_bn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """VGG-16 with batch norm (cfg D); pools that would shrink the map below 1x1 are dropped."""
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    config = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    for item in config:
        if item == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
        channels = item
    head = [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),
    ]
    return nn.Sequential(*layers, *head)


def build_model(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    **options,
) -> Classifier:
    """A freshly initialised model by name, shaped for the data set.

    Args:
        input_shape: (channels, height, width) of one sample.
        options: architecture-specific extras (`width` for digits_resnet).
    """
    channels, height, _ = input_shape
    if arch == "resnet18":
        net = resnet18(channels, num_classes)
    elif arch == "vgg16_bn":
        net = vgg16_bn(channels, num_classes, height)
    elif arch == "digits_resnet":
        net = digits_resnet(channels, num_classes, **options)
    else:
        raise UnknownModelError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return Classifier(net, mean, std)
