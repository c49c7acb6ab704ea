"""Layers and helpers shared by several model families (one definition each; the families import
them here): the reduced profile's width scaling, and Darknet's activations, its convolution with
batch norm and the five-stage backbone of Darknet-53, CSPDarknet53 and CSPResNeXt-50."""

from __future__ import annotations

from torch import Tensor, nn

# Darknet's leaky ReLU slope (YOLOv1 Sec. 2.2: phi(x) = x if x > 0, else 0.1 x).
LEAKY_SLOPE = 0.1


def scaled(width: int, width_mult: float) -> int:
    """A layer's width times `width_mult`, rounded, at least 1: the reduced profile's thinner
    networks (VGG and the detectors on it, the YOLO family, CSPResNeXt)."""
    return max(1, round(width * width_mult))


# Darknet's activation names: leaky ReLU (slope 0.1), Mish, Swish (x sigmoid(x); YOLOv4 Table 2)
# and "linear" (none).
ACTIVATIONS = ("leaky", "mish", "swish", "linear")


def make_activation(name: str) -> nn.Module:
    if name == "leaky":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    if name == "mish":
        return nn.Mish(inplace=True)
    if name == "swish":
        return nn.SiLU(inplace=True)
    if name == "linear":
        return nn.Identity()
    raise ValueError(f"activation={name!r}: allowed {', '.join(repr(a) for a in ACTIVATIONS)}")


class ConvBN(nn.Sequential):
    """Darknet's `[convolutional] batch_normalize=1`: convolution without bias, batch norm, activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, activation: str = "leaky",
                 groups: int = 1):
        super().__init__(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_ch), make_activation(activation))


class FiveStageBackbone(nn.Module):
    """What Darknet-53 and CSPDarknet53 share: a stem, five downsampling stages, the maps of the
    last three (strides 8, 16, 32) for the detector, and an optional classifier `fc`."""

    def forward_features(self, x: Tensor) -> list[Tensor]:
        x = self.stages[1](self.stages[0](self.stem(x)))
        c3 = self.stages[2](x)
        c4 = self.stages[3](c3)
        return [c3, c4, self.stages[4](c4)]

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """The logits; without a classifier (`num_classes=None`: a detector's backbone, e.g. under
        the reduced profile's pre-training) the three feature maps."""
        if self.fc is None:
            return self.forward_features(x)
        return self.classify(self.forward_features(x)[-1])

    def classify(self, features: Tensor) -> Tensor:
        return self.fc(features.mean(dim=(2, 3)))
