"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): 50k/10k colour 32x32 images, read from the
"python version" pickles, the data set of He et al. 2016, Sec. 4.2.

The pickles are read here rather than through torchvision's CIFAR classes, which md5-check
every file: the reader accepts any batch with the standard keys (the tests' fakes included).
torchvision is used only to download.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CorruptFileError, DatasetMissingError
from .tensor_datamodule import Splits

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
NATIVE_SIZE = 32


@dataclass(frozen=True)
class CifarSpec:
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    archive: str
    torchvision_class: str


SPECS = {
    "cifar10": CifarSpec(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels",
        "cifar-10-python.tar.gz", "CIFAR10",
    ),
    "cifar100": CifarSpec(
        "cifar-100-python", ("train",), "test", b"fine_labels", "cifar-100-python.tar.gz", "CIFAR100",
    ),
}


def folder(name: str, data_dir: str | Path) -> Path:
    return Path(data_dir) / SPECS[name].folder


def _absent(name: str, data_dir: str | Path) -> list[str]:
    spec, root = SPECS[name], folder(name, data_dir)
    return [f for f in (*spec.train_files, spec.test_file) if not (root / f).is_file()]


def missing_error(name: str, data_dir: str | Path) -> DatasetMissingError:
    spec, root = SPECS[name], folder(name, data_dir)
    absent = _absent(name, data_dir)
    what = f"{root}/ does not exist" if not root.is_dir() else f"{root}/ lacks {', '.join(absent)}"
    return DatasetMissingError(
        f"{name} not found: {what}. Fix it with one of:\n"
        f"  - download {spec.archive} (the python version) from {URL} and extract it into {Path(data_dir)}/ "
        f"(tar -xzf {spec.archive} -C {Path(data_dir)}), giving {root}/\n"
        f"  - python -m replicate data {name} --download   (where a network exists)"
    )


def _download(name: str, data_dir: Path) -> None:
    import torchvision.datasets

    data_dir.mkdir(parents=True, exist_ok=True)
    getattr(torchvision.datasets, SPECS[name].torchvision_class)(root=str(data_dir), train=True, download=True)


def locate(name: str, data_dir: str | Path, download: bool = False) -> Path:
    """The batches folder, downloaded with torchvision first if allowed and incomplete."""
    if _absent(name, data_dir) and download:
        try:
            _download(name, Path(data_dir))
        except (OSError, RuntimeError) as exc:  # no network, refused, checksum mismatch
            raise DatasetMissingError(f"{missing_error(name, data_dir)}\n(the download failed: {exc})") from exc
    if _absent(name, data_dir):
        raise missing_error(name, data_dir)
    return folder(name, data_dir)


def read_batch(path: Path, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, 32, 32] and int64 labels [N] from one pickled batch."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        raise CorruptFileError(
            f"{path}: not a CIFAR python batch with keys b'data' and {label_key!r} ({error!r}); "
            "delete the folder and extract the archive again."
        ) from error
    if data.ndim != 2 or data.shape[1] != 3 * NATIVE_SIZE * NATIVE_SIZE or len(labels) != len(data):
        raise CorruptFileError(f"{path}: expected data [N, 3072] and N labels, got {data.shape} and {labels.shape}.")
    images = torch.from_numpy(data.reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE).copy())
    return images, torch.from_numpy(labels)


def load(name: str, data_dir: str | Path, download: bool = False) -> Splits:
    spec = SPECS[name]
    root = locate(name, data_dir, download)
    train = [read_batch(root / f, spec.label_key) for f in spec.train_files]
    test_x, test_y = read_batch(root / spec.test_file, spec.label_key)
    return Splits(torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test_x, test_y)


def prepare(name: str, data_dir: str | Path, download: bool = False) -> Path:
    """Check (and, if allowed, download) the batches; return their folder."""
    return locate(name, data_dir, download)
