"""ImageNet (ILSVRC2012) read in place from class folders, with He et al. 2016, Sec. 3.4's
pipeline built from torchvision.transforms.v2 and run in DataLoader worker processes:

* training: shorter side resized to a random integer in `scale_range` ([256, 480]), random
  `image_size` (224) crop, horizontal flip, PCA lighting (std 0.1), RGB mean subtracted;
* testing: shorter side resized to `eval_resize` (256), then the centre crop or, with
  `eval_crops=10`, the four corners and the centre plus their mirrors (the standard 10-crop
  testing of Tables 2-3), giving [10, 3, 224, 224] per image.

Batches arrive as normalised float tensors, so the datamodule's batch hooks are the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from ..errors import ConfigError, DatasetMissingError
from . import transforms as T
from .sampler import KeepsTrainOrder, SeededSamples, TrainOrder
from .tensor_datamodule import subset_indices

FOLDER = "imagenet"
SPLITS = ("train", "val")


def folder(data_dir: str | Path) -> Path:
    return Path(data_dir) / FOLDER


def _has_class_folders(path: Path) -> bool:
    return path.is_dir() and any(entry.is_dir() for entry in os.scandir(path))


def missing_error(data_dir: str | Path) -> DatasetMissingError:
    root = folder(data_dir)
    absent = [f"{root / s}/" for s in SPLITS if not _has_class_folders(root / s)]
    return DatasetMissingError(
        f"ImageNet (ILSVRC2012) not found: {' and '.join(absent)} missing or without class folders. "
        "It cannot be downloaded automatically. Fix it by:\n"
        "  - getting ILSVRC2012 from https://image-net.org (free registration): the training and the "
        "validation image archives;\n"
        f"  - putting both in class-folder layout: {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG. "
        "The validation archive is flat: torchvision.datasets.ImageNet(root, split='val') (with the devkit "
        "archive beside it) or the usual valprep.sh script sorts it into <wnid> folders."
    )


def prepare(data_dir: str | Path, download: bool = False) -> Path:
    """Check that the two class-folder trees exist; return `<data_dir>/imagenet`."""
    root = folder(data_dir)
    if not all(_has_class_folders(root / s) for s in SPLITS):
        raise missing_error(data_dir)
    return root


def _mean(normalize: str) -> torch.Tensor | None:
    # A per-pixel mean over random crops at random scales is the RGB mean at every pixel, so
    # both normalisations subtract the standard RGB mean here.
    if normalize == "none":
        return None
    return torch.tensor(T.IMAGENET_RGB_MEAN).view(3, 1, 1)


def _to_float(mean: torch.Tensor | None) -> list:
    steps: list = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    return steps if mean is None else [*steps, T.SubtractMean(mean)]


def train_transform(image_size: int, scale_range: Sequence[int], augment: str, normalize: str, eval_resize: int,
                    randaugment: Mapping | None = None, random_erasing: float = 0.0):
    """The training pipeline: Sec. 3.4's scale augmentation (`augment="imagenet"`), GoogLeNet's
    random-sized crop (`"inception"`), or a deterministic one; optionally RandAugment (on the
    uint8 image) and random erasing (on the normalised tensor)."""
    mean = _mean(normalize)
    colour = [v2.RandAugment(**randaugment)] if randaugment else []
    erase = [v2.RandomErasing(p=random_erasing, value=0)] if random_erasing else []
    if augment == "imagenet":
        lo, hi = int(scale_range[0]), int(scale_range[1])
        # Geometry on the PIL image (cheap), colour on the float tensor.
        return v2.Compose([
            v2.RandomShortestSize(min_size=list(range(lo, hi + 1)), antialias=True),
            v2.RandomCrop(image_size),
            v2.RandomHorizontalFlip(),
            *colour,
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            T.Lighting(T.LIGHTING_STD),
            *([] if mean is None else [T.SubtractMean(mean)]),
            *erase,
        ])
    if augment == "inception":
        return v2.Compose([v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), *colour, *_to_float(mean), *erase])
    steps: list = [v2.Resize(eval_resize, antialias=True), v2.CenterCrop(image_size)]
    if augment == "cifar":  # Sec. 4.2's pad-crop-flip, on the centre crop
        steps += [v2.RandomCrop(image_size, padding=max(1, image_size // 8)), v2.RandomHorizontalFlip()]
    return v2.Compose([*steps, *colour, *_to_float(mean), *erase])


def eval_transform(image_size: int, eval_resize: int, eval_crops: int, normalize: str):
    """Resize the shorter side to `eval_resize`, then one centre crop or ten crops [10, C, H, W]."""
    steps: list = [v2.Resize(eval_resize, antialias=True), *_to_float(_mean(normalize))]
    if eval_crops == 10:
        steps += [v2.TenCrop(image_size), T.StackCrops()]
    else:
        steps.append(v2.CenterCrop(image_size))
    return v2.Compose(steps)


class _FolderWithClasses(ImageFolder):
    """An ImageFolder labelled by a given class mapping: val uses train's, so a class with no
    validation image cannot shift the others' labels."""

    def __init__(self, root: str, class_to_idx: dict[str, int], **kwargs):
        self.fixed_class_to_idx = dict(class_to_idx)
        super().__init__(root, allow_empty=True, **kwargs)

    def find_classes(self, directory):
        present = {e.name for e in os.scandir(directory) if e.is_dir()}
        unknown = sorted(present - set(self.fixed_class_to_idx))
        if unknown:
            raise ValueError(f"{directory}: class folders {unknown[:5]} do not exist in the training set.")
        mapping = self.fixed_class_to_idx
        return sorted(mapping, key=mapping.get), dict(mapping)


class ImageNetDataModule(KeepsTrainOrder, L.LightningDataModule):
    """ILSVRC2012 from `<data_dir>/imagenet/{train,val}/<wnid>/`; val and test are the val split."""

    def __init__(
        self,
        *,
        data_dir: str | Path,
        num_classes: int,
        image_size: int = 224,
        scale_range: Sequence[int] = (256, 480),
        eval_resize: int = 256,
        eval_crops: int = 1,
        batch_size: int,
        augment: str,
        normalize: str,
        seed: int = 0,
        num_workers: int = 0,
        train_subset: int | None = None,
        test_subset: int | None = None,
        randaugment: Mapping | None = None,
        random_erasing: float = 0.0,
    ):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.randaugment = dict(randaugment) if randaugment else None
        self.random_erasing = float(random_erasing)
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.input_size: tuple[int, int, int] = (3, self.image_size, self.image_size)
        self.scale_range = (int(scale_range[0]), int(scale_range[1]))
        self.eval_resize = int(eval_resize)
        self.eval_crops = int(eval_crops)
        self.batch_size = int(batch_size)
        self.augment = augment
        self.normalize = normalize
        self.seed = int(seed)
        self.order = TrainOrder(self.seed)
        self.num_workers = int(num_workers)
        self.train_subset = train_subset
        self.test_subset = test_subset
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        root = prepare(self.data_dir)
        train_tf = train_transform(self.image_size, self.scale_range, self.augment, self.normalize, self.eval_resize,
                                   self.randaugment, self.random_erasing)
        train = ImageFolder(str(root / "train"), transform=train_tf)
        classes = train.class_to_idx
        if len(classes) > self.num_classes:
            raise ConfigError(f"data.num_classes={self.num_classes} but {root / 'train'} has {len(classes)} classes.")
        # Validation along training (curves, the plateau schedule) uses the centre crop; the final
        # test uses `eval_crops` (10 for Tables 2-3), ten times the cost, once.
        val, test = (
            _FolderWithClasses(str(root / "val"), classes,
                               transform=eval_transform(self.image_size, self.eval_resize, crops, self.normalize))
            for crops in (1, self.eval_crops)
        )
        self.train_set = self._subset(train, self.train_subset)
        self.val_set = self._subset(val, self.test_subset)
        self.test_set = self._subset(test, self.test_subset)

    def _subset(self, dataset: Dataset, size: int | None) -> Dataset:
        indices = subset_indices(len(dataset), size, self.seed)  # type: ignore[arg-type]
        return dataset if indices is None else Subset(dataset, indices.tolist())

    def _loader(self, split: str) -> DataLoader:
        if self.train_set is None:
            self.setup()
        dataset, train = getattr(self, f"{split}_set"), split == "train"
        if train:  # each sample's augmentation a function of (seed, epoch, index): see sampler.py
            dataset = SeededSamples(dataset, self.seed)
        return DataLoader(
            dataset, batch_size=self.batch_size, drop_last=train, num_workers=self.num_workers,
            sampler=self.order.sampler(len(dataset), self.batch_size, keyed=True) if train else None,
            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed) if train else None,
        )

    def transform_batch(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """Batches are already augmented and normalised in the workers: passed through."""
        return x

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
