"""`TensorDataModule`: a dataset small enough to live in memory as one uint8 tensor, augmented
per batch on the device the batch is on.

The loaders yield uint8 batches gathered from the tensors in one indexing each (no worker
processes: indexing a tensor is faster than pickling it to workers), on the GPU when training
runs there; `on_after_batch_transfer` then converts to
float on the batch's device, subtracts the mean and applies the training augmentation there,
vectorised with one random draw per sample. On a GPU the whole input pipeline runs on the GPU.

Augmentations (He et al. 2016): "cifar" is Sec. 4.2 (pad size/8, random crop, flip); "imagenet"
is Sec. 3.4 (random scale, crop, flip, PCA lighting), with the scale range taken relative to
the paper's 224 crop so that it means the same zoom at any image size; "inception" is
GoogLeNet's random-sized crop (8-100% of the area, aspect 3/4-4/3) and flip, the crop most later
ImageNet recipes use. RandAugment and random erasing (the RDNet recipe) are optional on top.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2

from ..errors import ConfigError
from . import transforms as T
from .sampler import TrainOrder


class Splits(NamedTuple):
    """A dataset's two splits: uint8 images [N, C, H, W] and int64 labels [N]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def subset_indices(n: int, size: int | None, seed: int) -> torch.Tensor | None:
    """The first `size` items of a permutation of range(n) drawn with `seed` (None = all)."""
    if size is None or size >= n:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size]


class BatchedTensors(TensorDataset):
    """A TensorDataset that the DataLoader asks for whole batches (`__getitems__`): one gather
    per batch instead of one indexing per sample, which matters when the tensors sit on a GPU."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, device=self.tensors[0].device)
        return tuple(t[index] for t in self.tensors)


def _already_batched(batch):
    return batch


class TensorDataModule(L.LightningDataModule):
    """An in-memory image-classification dataset (Fashion-MNIST, CIFAR-10/100).

    `load()` returns the native-resolution `Splits`; `setup` subsets, resizes to `image_size`
    and computes the training mean once. `num_classes` and `input_size` are known before setup.
    """

    def __init__(
        self,
        load: Callable[[], Splits],
        *,
        name: str,
        num_classes: int,
        channels: int,
        native_size: int,
        image_size: int | None,
        batch_size: int,
        augment: str,
        normalize: str,
        seed: int = 0,
        train_subset: int | None = None,
        test_subset: int | None = None,
        scale_range: Sequence[float] = (256, 480),
        randaugment: Mapping | None = None,
        random_erasing: float = 0.0,
    ):
        super().__init__()
        self._load = load
        self.name = name
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.size = int(image_size or native_size)
        self.input_size: tuple[int, int, int] = (self.channels, self.size, self.size)
        self.batch_size = int(batch_size)
        self.augment = augment
        self.normalize = normalize
        self.seed = int(seed)
        self.train_subset = train_subset
        self.test_subset = test_subset
        # Sec. 3.4's short side range over its 224 crop: the zoom factors of the scale augmentation.
        self.scale_factors = (scale_range[0] / T.PAPER_CROP, scale_range[1] / T.PAPER_CROP)
        self.splits: Splits | None = None
        self.mean: torch.Tensor | None = None  # [C, H, W] or [C, 1, 1] on the [0, 1] scale
        self._device_cache: dict[torch.device, tuple[torch.Tensor | None, torch.Generator]] = {}
        self.order = TrainOrder(self.seed)
        self._augment_states: dict[str, torch.Tensor] = {}  # restored from a checkpoint, per device
        # RandAugment (on uint8 images) and random erasing (on normalised ones), per sample.
        self.randaugment = v2.RandAugment(**randaugment) if randaugment else None
        self.random_erasing = v2.RandomErasing(p=random_erasing, value=0) if random_erasing else None

    # -- data -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:  # Lightning calls setup once per stage; read the data once
            return
        raw = self._load()
        train = subset_indices(len(raw.train_y), self.train_subset, self.seed)
        test = subset_indices(len(raw.test_y), self.test_subset, self.seed)
        train_x, train_y = (raw.train_x, raw.train_y) if train is None else (raw.train_x[train], raw.train_y[train])
        test_x, test_y = (raw.test_x, raw.test_y) if test is None else (raw.test_x[test], raw.test_y[test])
        self._check(train_y, test_y, train_x)
        self.splits = Splits(
            T.resize_uint8(train_x, self.size), train_y.long(), T.resize_uint8(test_x, self.size), test_y.long()
        )
        self.mean = self._training_mean(self.splits.train_x)
        self._device_cache.clear()
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if device is not None and device.type == "cuda":
            # The whole dataset lives on the GPU (CIFAR: 180 MB as uint8): no host-to-device copies.
            self.splits = Splits(*(t.to(device) for t in self.splits))

    def _check(self, train_y: torch.Tensor, test_y: torch.Tensor, train_x: torch.Tensor) -> None:
        if train_x.shape[1] != self.channels:
            raise ConfigError(
                f"data.channels={self.channels} but {self.name} images have {train_x.shape[1]} channel(s)."
            )
        top = int(max(train_y.max(), test_y.max())) if len(train_y) and len(test_y) else -1
        if top >= self.num_classes:
            raise ConfigError(f"data.num_classes={self.num_classes} but {self.name} has label {top}.")

    def _training_mean(self, images: torch.Tensor, chunk: int = 8192) -> torch.Tensor | None:
        """The mean image (or channel mean) of the training set on the [0, 1] scale."""
        if self.normalize == "none":
            return None
        total = torch.zeros(images.shape[1:], dtype=torch.float64)
        for start in range(0, images.shape[0], chunk):
            total += images[start: start + chunk].double().sum(0)
        mean = total / (255.0 * max(images.shape[0], 1))
        if self.normalize == "channel_mean":
            mean = mean.mean(dim=(1, 2), keepdim=True)
        return mean.float()

    def _require_setup(self) -> Splits:
        if self.splits is None:
            self.setup()
        assert self.splits is not None
        return self.splits

    def train_dataloader(self) -> DataLoader:
        s = self._require_setup()
        return DataLoader(
            BatchedTensors(s.train_x, s.train_y), batch_size=self.batch_size, drop_last=True, num_workers=0,
            sampler=self.order.sampler(len(s.train_y), self.batch_size), collate_fn=_already_batched,
            generator=torch.Generator().manual_seed(self.seed),  # the loader's own draw: not the global stream
        )

    def _test_loader(self) -> DataLoader:
        s = self._require_setup()
        return DataLoader(BatchedTensors(s.test_x, s.test_y), batch_size=self.batch_size, shuffle=False, num_workers=0,
                          collate_fn=_already_batched)

    def val_dataloader(self) -> DataLoader:
        return self._test_loader()  # the paper plots and reports test error (Figs. 4, 6; Tables)

    def test_dataloader(self) -> DataLoader:
        return self._test_loader()

    # -- per-batch transform ------------------------------------------------------------------
    def _on_device(self, device: torch.device) -> tuple[torch.Tensor | None, torch.Generator]:
        """The mean and an augmentation generator living on `device`, made once per device."""
        if device not in self._device_cache:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            # Its own generator: augmentation draws do not shift the model's initialisation, and
            # each process of a multi-device run augments differently.
            generator = torch.Generator(device=device).manual_seed(self.seed + 1 + rank)
            if str(device) in self._augment_states:  # a resumed run: where the augmentation stream was
                generator.set_state(self._augment_states.pop(str(device)))
            mean = None if self.mean is None else self.mean.to(device)
            self._device_cache[device] = (mean, generator)
        return self._device_cache[device]

    def transform_batch(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 [B, C, H, W] -> float on x's device: [0, 1] scale, mean subtracted, then (train
        only) augmented.

        The mean is subtracted before padding and cropping, as the paper's inputs are "32x32
        images with the per-pixel mean subtracted" that are then padded (Sec. 4.2): the zero
        padding is the mean colour and the mean image stays aligned with the pixels it was
        computed from.
        """
        if self.mean is None and self.normalize != "none":
            self._require_setup()
        mean, generator = self._on_device(x.device)
        if train and self.randaugment is not None:
            x = T.per_sample(self.randaugment, x)
        x = x.float().div_(255.0)
        if mean is not None:
            x = x - mean
        if train and self.augment == "cifar":
            x = T.pad_crop_flip(x, max(1, self.size // 8), generator)
        elif train and self.augment == "imagenet":
            x = T.scale_crop_flip(x, self.scale_factors, generator)
            if x.shape[1] == 3:  # PCA lighting is defined for RGB only; grey images skip it
                x = T.lighting(x, T.LIGHTING_STD, generator)
        elif train and self.augment == "inception":
            x = T.random_resized_crop_flip(x, generator=generator)
        if train and self.random_erasing is not None:
            x = T.per_sample(self.random_erasing, x)
        return x

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        train = self.trainer is not None and bool(self.trainer.training)
        if train:
            self.order.trained()
        return self.transform_batch(x, train), y

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Kept in each checkpoint: how far into its epoch training got, and where each device's
        augmentation stream was, so that a resumed run draws what the uninterrupted one would."""
        augment = {str(device): generator.get_state() for device, (_, generator) in self._device_cache.items()}
        return {"order": self.order.state_dict(), "augment": augment}

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state["order"])
        self._augment_states = dict(state.get("augment", {}))
        for device, (_, generator) in self._device_cache.items():
            if str(device) in self._augment_states:
                generator.set_state(self._augment_states.pop(str(device)))
