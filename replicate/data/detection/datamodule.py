"""`DetectionDataModule`: train and test detection sets (VOC, COCO, the generated reduced set)
as Lightning data, with the Fast/Faster R-CNN image scaling and the YOLO papers' augmentation
(`build_transform`), difficult and crowd objects left out of training, subsets drawn by seed
and a training order that resumes mid-epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from ...errors import ConfigError, choices
from .. import transforms as T
from ..sampler import KeepsTrainOrder, SeededSamples, TrainOrder
from ..tensor_datamodule import subset_indices
from .augment import DetectionAugment
from .base import collate, drop_flagged


NORMALIZATIONS = ("channel_mean", "none")
# Fast R-CNN Sec. 3.3 / Faster R-CNN Sec. 3.3: shorter side 600 pixels, longer side at most 1000.
PAPER_MIN_SIZE, PAPER_MAX_SIZE = 600, 1000


def build_transform(*, train: bool, min_size: int | None, max_size: int | None, flip: bool,
                    normalize: str, augment: DetectionAugment | None = None) -> v2.Compose:
    """Scale so the shorter side is `min_size` unless the longer one would exceed `max_size`
    (Fast R-CNN Sec. 3.3's single scale: 600 / 1000; None keeps the stored size), in training
    apply `augment`'s random scaling and translation (the YOLO papers), flip horizontally with
    probability 1/2 (Fast R-CNN Sec. 2.3) and apply `augment`'s HSV jitter, convert to float in
    [0, 1] and subtract the ImageNet RGB mean (`channel_mean`; the pre-trained trunks' input)."""
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"data.normalize={normalize!r} is not supported.{choices(str(normalize), NORMALIZATIONS)}")
    steps: list = []
    if min_size is not None:
        steps.append(v2.Resize(size=int(min_size), max_size=None if max_size is None else int(max_size),
                               antialias=True))
    if train and augment is not None:
        steps.extend(augment.geometric())
    if train and flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if train and augment is not None:
        steps.extend(augment.photometric())
    if normalize == "channel_mean":
        # Mean subtraction only, as the Caffe-trained trunks expect (unit std: no division).
        steps.append(v2.Normalize(mean=list(T.IMAGENET_RGB_MEAN), std=[1.0, 1.0, 1.0]))
    return v2.Compose(steps)


class _WithoutFlagged(Dataset):
    def __init__(self, dataset: Dataset, keys: Sequence[str]):
        self.dataset, self.keys = dataset, tuple(keys)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if sample is None:  # an unreadable image: dropped by `collate`
            return None
        image, target = sample
        return image, drop_flagged(target, self.keys)


class DetectionDataModule(KeepsTrainOrder, L.LightningDataModule):
    """Train and test detection sets from two factories `make(transforms) -> DetectionDataset`
    (one or several sets concatenated for training, e.g. VOC 07+12). `val` and `test` both
    give the test set. Batches are `(images, targets)` lists (`collate`)."""

    def __init__(
        self,
        *,
        make_train: Callable[[Callable], Dataset],
        make_test: Callable[[Callable], Dataset],
        num_classes: int,
        class_names: Sequence[str] | None = None,
        batch_size: int,
        min_size: int | None = PAPER_MIN_SIZE,
        max_size: int | None = PAPER_MAX_SIZE,
        flip: bool = True,
        normalize: str = "none",
        augment: DetectionAugment | None = None,
        train_drop: Sequence[str] = ("difficult", "iscrowd"),
        train_subset: int | None = None,
        test_subset: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.make_train, self.make_test = make_train, make_test
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.batch_size = int(batch_size)
        sizes = {"min_size": min_size, "max_size": max_size, "normalize": normalize}
        self.train_tf = build_transform(train=True, flip=flip, augment=augment, **sizes)
        self.test_tf = build_transform(train=False, flip=False, **sizes)
        self.train_drop = tuple(train_drop)
        self.train_subset, self.test_subset = train_subset, test_subset
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.order = TrainOrder(self.seed)
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, test = self.make_train(self.train_tf), self.make_test(self.test_tf)
        names = getattr(test, "class_names", None)
        if names is not None:
            if len(names) != self.num_classes:
                raise ConfigError(f"data.num_classes={self.num_classes} but the data set has {len(names)} classes.")
            self.class_names = list(names)
        self.train_set = self._subset(_WithoutFlagged(train, self.train_drop) if self.train_drop else train,
                                      self.train_subset)
        self.test_set = self._subset(test, self.test_subset)

    def _subset(self, dataset: Dataset, size: int | None) -> Dataset:
        indices = subset_indices(len(dataset), size, self.seed)  # type: ignore[arg-type]
        return dataset if indices is None else Subset(dataset, sorted(indices.tolist()))

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            self.setup()
            dataset = self.train_set if train else self.test_set
        keyed = train and self.num_workers > 0  # with workers: see sampler.py's SeededSamples
        if keyed:
            dataset = SeededSamples(dataset, self.seed)
        return DataLoader(
            dataset, batch_size=self.batch_size, drop_last=train, collate_fn=collate,
            sampler=self.order.sampler(len(dataset), self.batch_size, keyed) if train else None,  # type: ignore[arg-type]
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)
