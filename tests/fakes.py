"""Tiny on-disk data sets in the real formats, for tests that must not download anything.

Each writer takes the data root (what `build_datamodule(data_dir=...)` receives), writes the
layout the reader expects under it and returns the folder it wrote. Images carry a
class-dependent pattern, so a model can learn them in a few steps.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

FASHION_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


def _labels(n: int, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(n) % classes)


def _pattern(labels: np.ndarray, channels: int, size: int, classes: int, seed: int) -> np.ndarray:
    """uint8 [N, C, size, size]: low noise plus a bright horizontal band whose row depends on the
    class (and, in colour, a class-dependent tint)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), channels, size, size), dtype=np.uint8)
    band = max(1, size // 8)
    for i, label in enumerate(labels):
        top = (int(label) * (size - band)) // max(classes - 1, 1)
        images[i, :, top: top + band, :] = 220
        if channels == 3:
            images[i, int(label) % 3] //= 2
    return images


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array in IDX format (gzipped if the name ends with .gz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(raw)
    return path


def write_idx_fashion_mnist(root: str | Path, n_train: int = 64, n_test: int = 32, gz: bool = True) -> Path:
    """The four Fashion-MNIST IDX files (28x28, labels 0..9) in `root/fashion-mnist/`."""
    folder = Path(root) / "fashion-mnist"
    suffix = ".gz" if gz else ""
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        labels = _labels(n, 10, seed)
        images = _pattern(labels, 1, 28, 10, seed)[:, 0]
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return folder


def write_corrupt_idx(path: str | Path, kind: str = "magic") -> Path:
    """A broken IDX file: `kind="magic"` has a wrong magic number, `"truncated"` lacks data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "magic":
        raw = b"\x12\x34\x08\x03" + struct.pack(">3I", 2, 28, 28) + bytes(2 * 28 * 28)
    elif kind == "truncated":
        raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 28, 28) + bytes(28 * 28)
    else:
        raise ValueError(f"kind={kind!r}: 'magic' or 'truncated'")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(raw)
    return path


def _write_pickle(path: Path, batch: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(batch, f)


def _cifar_batch(n: int, classes: int, seed: int, label_key: bytes) -> dict:
    labels = _labels(n, classes, seed)
    images = _pattern(labels, 3, 32, classes, seed).reshape(n, 3072)
    return {b"data": images, label_key: labels.tolist(), b"batch_label": b"fake"}


def write_cifar10(root: str | Path, n_per_batch: int = 20) -> Path:
    """`root/cifar-10-batches-py/`: data_batch_1..5 and test_batch, each `n_per_batch` images."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        _write_pickle(folder / f"data_batch_{i}", _cifar_batch(n_per_batch, 10, i, b"labels"))
    _write_pickle(folder / "test_batch", _cifar_batch(n_per_batch, 10, 0, b"labels"))
    return folder


def write_cifar100(root: str | Path, n: int = 40) -> Path:
    """`root/cifar-100-python/`: train and test pickles of `n` images each, 100 fine classes."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, seed in (("train", 1), ("test", 0)):
        batch = _cifar_batch(n, 100, seed, b"fine_labels")
        batch[b"coarse_labels"] = [label // 5 for label in batch[b"fine_labels"]]
        _write_pickle(folder / name, batch)
    return folder


def write_imagenet_folder(root: str | Path, classes: int = 3, per_class: int = 4, size: int = 40) -> Path:
    """`root/imagenet/{train,val}/n0000000k/*.JPEG`: `per_class` JPEGs per class and split,
    landscape and portrait (short side `size`), coloured by class."""
    from PIL import Image

    folder = Path(root) / "imagenet"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(classes):
            class_dir = folder / split / f"n{k:08d}"
            class_dir.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = (size, size * 5 // 4) if i % 2 else (size * 5 // 4, size)
                pixels = rng.integers(0, 50, size=(h, w, 3), dtype=np.uint8)
                pixels[..., k % 3] += 150
                Image.fromarray(pixels).save(class_dir / f"{split}_{k}_{i}.JPEG", quality=90)
    return folder


def proposal_batch():
    """Two images with targets and selective-search-like proposals (the second without boxes:
    every box of an image may be difficult), for the detectors fed external proposals."""
    images = [torch.rand(3, 64, 96), torch.rand(3, 80, 64)]
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([2]),
         "proposals": torch.tensor([[9.0, 10.0, 40.0, 52.0], [0.0, 0.0, 30.0, 30.0], [50.0, 5.0, 90.0, 60.0]])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
         "proposals": torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 10.0, 60.0, 70.0]])},
    ]
    return images, targets
