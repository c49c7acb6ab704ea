"""The YOLO papers' training augmentation, as torchvision.transforms.v2 steps that move the
boxes with the pixels.

* YOLOv1 Sec. 2.2: "random scaling and translations of up to 20% of the original image size" ->
  `v2.RandomAffine` (no rotation or shear), followed by `v2.SanitizeBoundingBoxes`, which drops
  the boxes pushed out of the frame together with their labels and flags.
* YOLOv1 Sec. 2.2: "randomly adjust the exposure and saturation of the image by up to a factor of
  1.5 in the HSV color space" -> `RandomHSV`; YOLOv2-v4 add a hue shift (their released
  configurations: hue .1).

`DetectionAugment` holds the five numbers (`recipe.detection_augment` in conf/recipe/yolo*.yaml)
and validates them; `build_transform` in `replicate.data.detection` puts the steps in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ...errors import ConfigError

__all__ = ["DetectionAugment", "RandomHSV", "random_scale_factor", "scale_saturation"]

TARGET_FIELDS = ("labels", "difficult", "iscrowd", "area")


def random_scale_factor(limit: float, generator: torch.Generator | None = None) -> float:
    """A factor in [1 / limit, limit]: uniform in [1, limit], inverted with probability 1/2, so
    that darkening and brightening by up to `limit` are equally likely (Darknet's `rand_scale`,
    the implementation behind "up to a factor of 1.5")."""
    u = torch.rand(2, generator=generator)
    factor = 1.0 + float(u[0]) * (limit - 1.0)
    return factor if float(u[1]) < 0.5 else 1.0 / factor


def scale_saturation(image: Tensor, factor: float) -> Tensor:
    """The image with its HSV saturation multiplied by `factor`, hue and value unchanged.

    In HSV every channel is c = V (1 - S k_c), with k_c fixed by the hue, so scaling S by f
    moves each channel to V - f (V - c): no round trip through HSV is needed. A saturation pushed
    past 1 gives negative channels, which are clipped to 0 (Darknet clips the same way)."""
    value = image.amax(dim=-3, keepdim=True)
    return (value - factor * (value - image)).clamp(0.0, 1.0)


class RandomHSV(v2.Transform):
    """Random hue shift, saturation and exposure (value) factors in HSV space, for float images
    in [0, 1]; boxes and every other input pass through unchanged.

    `hue` is the largest shift as a fraction of the hue circle (0 <= hue <= 0.5); `saturation`
    and `exposure` are the largest factors (>= 1; each drawn by `random_scale_factor`)."""

    def __init__(self, hue: float = 0.0, saturation: float = 1.0, exposure: float = 1.0):
        super().__init__()
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue={hue}: a fraction of the hue circle in [0, 0.5]")
        if saturation < 1.0 or exposure < 1.0:
            raise ValueError(f"saturation={saturation}, exposure={exposure}: largest factors, each >= 1")
        self.hue, self.saturation, self.exposure = float(hue), float(saturation), float(exposure)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        shift = (2.0 * float(torch.rand(())) - 1.0) * self.hue
        return {"hue": shift, "saturation": random_scale_factor(self.saturation),
                "exposure": random_scale_factor(self.exposure)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image) and not (type(inpt) is Tensor and inpt.ndim >= 3):
            return inpt
        if not inpt.is_floating_point():
            raise TypeError("RandomHSV expects float images in [0, 1]: put it after v2.ToDtype(scale=True).")
        image = inpt.as_subclass(Tensor)
        if params["hue"]:
            image = TF.adjust_hue(image, params["hue"])
        image = scale_saturation(image, params["saturation"])
        # Scaling V scales every channel alike; the clip is Darknet's too.
        image = (image * params["exposure"]).clamp(0.0, 1.0)
        return tv_tensors.wrap(image, like=inpt) if isinstance(inpt, tv_tensors.Image) else image


def _target_fields(inputs: Any) -> tuple[Tensor, ...]:
    """The per-box fields of a `(image, target)` sample that must be dropped with their boxes."""
    target = inputs[1]
    return tuple(target[key] for key in TARGET_FIELDS if key in target)


@dataclass(frozen=True)
class DetectionAugment:
    """The photometric and geometric training augmentation of the YOLO papers.

    scale      largest relative change of the image's scale (0.2: factors in [0.8, 1.2])
    translate  largest shift as a fraction of the image's width and height
    hue        largest hue shift, a fraction of the hue circle
    saturation, exposure  largest HSV factors (1: off)
    """

    scale: float = 0.0
    translate: float = 0.0
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0

    @classmethod
    def from_config(cls, cfg: Mapping | None, key: str = "recipe.detection_augment") -> DetectionAugment | None:
        """`None` for a missing or null entry; a `ConfigError` naming the key and what is allowed
        for an unknown or out-of-range value."""
        if cfg is None:
            return None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {', '.join(unknown)}. Allowed: {', '.join(sorted(known))}.")
        values = {}
        for name in known & set(cfg):
            try:
                values[name] = float(cfg[name])
            except (TypeError, ValueError):
                raise ConfigError(f"{key}.{name}={cfg[name]!r} is not a number.") from None
        augment = cls(**values)
        limits = {
            "scale": (0.0 <= augment.scale < 1.0, "in [0, 1)"),
            "translate": (0.0 <= augment.translate <= 1.0, "in [0, 1]"),
            "hue": (0.0 <= augment.hue <= 0.5, "in [0, 0.5] (a fraction of the hue circle)"),
            "saturation": (augment.saturation >= 1.0, ">= 1 (the largest factor; 1 is off)"),
            "exposure": (augment.exposure >= 1.0, ">= 1 (the largest factor; 1 is off)"),
        }
        for name, (ok, allowed) in limits.items():
            if not ok:
                raise ConfigError(f"{key}.{name}={getattr(augment, name)} is out of range: {allowed}.")
        return augment

    def geometric(self) -> list[v2.Transform]:
        """Steps for uint8 or float images before `ToDtype`; empty when scale and shift are 0."""
        if not (self.scale or self.translate):
            return []
        # Uncovered pixels are mid-grey, the value Darknet fills with.
        return [v2.RandomAffine(degrees=0.0, translate=(self.translate, self.translate),
                                scale=(1.0 - self.scale, 1.0 + self.scale),
                                interpolation=v2.InterpolationMode.BILINEAR, fill=127),
                v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_target_fields)]

    def photometric(self) -> list[v2.Transform]:
        """Steps for float images in [0, 1]; empty when every factor is off."""
        if not (self.hue or self.saturation > 1.0 or self.exposure > 1.0):
            return []
        return [RandomHSV(self.hue, self.saturation, self.exposure)]
