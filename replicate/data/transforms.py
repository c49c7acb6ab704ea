"""The augmentations and normalisations of He et al. 2016 ("Deep residual learning for image
recognition"), written once for whole batches on any device.

* Sec. 4.2 (CIFAR): pad 4 pixels on each side, take a random 32x32 crop, flip horizontally with
  probability 1/2 -> `pad_crop_flip` (the pad scales with the image: size / 8).
* Sec. 3.4 (ImageNet): resize so the shorter side is random in [256, 480], take a random 224x224
  crop, flip, add AlexNet's PCA colour noise (Krizhevsky et al. 2012, Sec. 4.1) -> `Lighting`
  for torchvision.transforms.v2 pipelines and `scale_crop_flip` + `lighting` for in-memory
  batches (the reduced profile's stand-in datasets).
* Both sections subtract a mean: the per-pixel mean image (CIFAR) or the RGB mean (ImageNet).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors

# Standard ImageNet statistics on the [0, 1] scale.
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
# Eigen-decomposition of the ImageNet RGB covariance (columns of the matrix are the eigenvectors),
# as used by AlexNet-style "lighting" noise in fb.resnet.torch and most ResNet reproductions.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
LIGHTING_STD = 0.1  # Sec. 3.4 follows AlexNet: alpha ~ N(0, 0.1)
PAPER_CROP = 224  # the crop Sec. 3.4's scale range [256, 480] refers to


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize a uint8 [N, C, H, W] stack to size x size (antialiased bilinear), still uint8.

    Done once on the whole in-memory dataset, in chunks to bound the float copy's memory.
    """
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start: start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start: start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def pad_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sec. 4.2's augmentation on a float batch [B, C, H, W]: zero-pad `pad` pixels on each side,
    crop back to H x W at a random offset and mirror with probability 1/2, each sample drawn
    independently. One gather does crop and flip together, so it costs one pass on any device.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    left = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    flip = torch.rand(b, device=x.device, generator=generator) < 0.5
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = top[:, None] + ar_h  # [B, H]
    cols = left[:, None] + torch.where(flip[:, None], ar_w.flip(0), ar_w)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def _resample_windows(x: torch.Tensor, w: torch.Tensor, h: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
                      generator: torch.Generator | None) -> torch.Tensor:
    """Resample each sample's window (width and height as fractions of the side, centre in
    normalised coordinates) to the full size, mirrored with probability 1/2: one `grid_sample`."""
    b = x.shape[0]
    sign = torch.where(torch.rand(b, device=x.device, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = sign * w
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def scale_crop_flip(
    x: torch.Tensor, scale_range: Sequence[float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sec. 3.4's scale augmentation on a float batch of square images [B, C, S, S]: each sample is
    (conceptually) resized so its side is k*S with k uniform in `scale_range` (k >= 1), then an
    S x S window is cropped at a random position and mirrored with probability 1/2.

    Resize and crop are one bilinear resampling (`grid_sample`) per sample: only the window
    that survives the crop is ever computed.
    """
    lo, hi = float(scale_range[0]), float(scale_range[1])
    b = x.shape[0]
    opts = {"device": x.device, "generator": generator}
    k = lo + (hi - lo) * torch.rand(b, **opts)
    frac = 1.0 / k  # the crop covers this fraction of the original side
    # Window centre in normalised coordinates: anywhere that keeps the window inside the image.
    cx = (1 - frac) * (2 * torch.rand(b, **opts) - 1)
    cy = (1 - frac) * (2 * torch.rand(b, **opts) - 1)
    return _resample_windows(x, frac, frac, cx, cy, generator)


def random_resized_crop_flip(
    x: torch.Tensor, area: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """GoogLeNet's crop augmentation (Szegedy et al. 2015, Sec. 6: patches covering 8% to 100% of
    the image area, aspect ratio in [3/4, 4/3]), resized back to the input size and mirrored with
    probability 1/2, on a float batch [B, C, H, W]: torchvision's RandomResizedCrop for in-memory
    batches, one bilinear resampling per sample."""
    b = x.shape[0]
    opts = {"device": x.device, "generator": generator}
    s = area[0] + (area[1] - area[0]) * torch.rand(b, **opts)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(b, **opts)
    r = torch.exp(log_r)
    w = torch.sqrt(s * r).clamp(max=1.0)  # fractions of the side
    h = torch.sqrt(s / r).clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(b, **opts) - 1)
    cy = (1 - h) * (2 * torch.rand(b, **opts) - 1)
    return _resample_windows(x, w, h, cx, cy, generator)


def per_sample(transform: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a torchvision v2 transform to each image of a batch with its own random draw (v2
    transforms draw once per call, so a batch passed whole would get one draw for all)."""
    return torch.stack([transform(image) for image in x])


def lighting(x: torch.Tensor, std: float = LIGHTING_STD, generator: torch.Generator | None = None) -> torch.Tensor:
    """AlexNet's PCA colour augmentation on RGB images [..., 3, H, W] on the [0, 1] scale: adds
    sum_j alpha_j * lambda_j * v_j to every pixel, alpha_j ~ N(0, std) drawn per image.
    """
    if x.shape[-3] != 3:
        raise ValueError(f"PCA lighting needs RGB images, got {x.shape[-3]} channel(s).")
    lead = x.shape[:-3]
    eigval = torch.tensor(IMAGENET_PCA_EIGVAL, device=x.device, dtype=x.dtype)
    eigvec = torch.tensor(IMAGENET_PCA_EIGVEC, device=x.device, dtype=x.dtype)
    alpha = torch.randn((*lead, 3), device=x.device, generator=generator).to(x.dtype) * std
    rgb = (alpha * eigval) @ eigvec.T  # [..., 3]: eigvec @ (alpha * eigval) per image
    return x + rgb[..., :, None, None]


class Lighting(nn.Module):
    """`lighting` as a torchvision.transforms.v2 step (after `ToDtype(float32, scale=True)`)."""

    def __init__(self, std: float = LIGHTING_STD):
        super().__init__()
        self.std = std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = lighting(image.as_subclass(torch.Tensor), self.std)
        return tv_tensors.wrap(out, like=image) if isinstance(image, tv_tensors.TVTensor) else out

    def extra_repr(self) -> str:
        return f"std={self.std}"


class SubtractMean(nn.Module):
    """Subtract a fixed mean (per channel [C, 1, 1] or per pixel [C, H, W]); no std division,
    as the paper only subtracts the mean (Sec. 3.4, Sec. 4.2)."""

    def __init__(self, mean: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = image.as_subclass(torch.Tensor) - self.mean
        return tv_tensors.wrap(out, like=image) if isinstance(image, tv_tensors.TVTensor) else out


class StackCrops(nn.Module):
    """Turn v2.TenCrop's tuple of crops into one [n_crops, C, H, W] tensor (10-crop testing)."""

    def forward(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([c.as_subclass(torch.Tensor) for c in crops])
