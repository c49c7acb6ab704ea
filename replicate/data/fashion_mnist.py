"""Fashion-MNIST (Xiao et al. 2017): 60k/10k grey 28x28 images of 10 clothing classes, four IDX
files. The reduced profile's stand-in for CIFAR and ImageNet, installed on Debian/Ubuntu by the
`dataset-fashion-mnist` package, so the workbook runs without a network.

Looked up in `<data_dir>/fashion-mnist/`, then `SYSTEM_DIR` (the Debian package), then the
`<data_dir>/FashionMNIST/raw/` folder a torchvision download leaves behind; both `.gz` and
uncompressed names are accepted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import CorruptFileError, DatasetMissingError
from .idx import read_idx
from .tensor_datamodule import Splits

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FOLDER = "fashion-mnist"
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FILES = (*SPLIT_FILES["train"], *SPLIT_FILES["test"])
NATIVE_SIZE = 28


def _file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _complete(folder: Path) -> bool:
    return all(_file(folder, name) is not None for name in FILES)


def _candidates(data_dir: Path) -> list[Path]:
    return [data_dir / FOLDER, Path(SYSTEM_DIR), data_dir / "FashionMNIST" / "raw"]


def find(data_dir: str | Path) -> Path | None:
    """The first folder holding all four IDX files, or None."""
    return next((folder for folder in _candidates(Path(data_dir)) if _complete(folder)), None)


def missing_error(data_dir: str | Path) -> DatasetMissingError:
    data_dir = Path(data_dir)
    target = data_dir / FOLDER
    partial = ""
    if target.is_dir():
        absent = [name for name in FILES if _file(target, name) is None]
        partial = f" {target}/ exists but lacks {', '.join(absent)}."
    return DatasetMissingError(
        f"Fashion-MNIST not found: looked in {target}/ and {SYSTEM_DIR}/.{partial} Fix it with one of:\n"
        f"  - sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu; installs {SYSTEM_DIR}/)\n"
        f"  - python -m replicate data fashion_mnist --download   (where a network exists)\n"
        f"  - copy {', '.join(f'{n}.gz' for n in FILES)} "
        f"(https://github.com/zalandoresearch/fashion-mnist) into {target}/"
    )


def _download(data_dir: Path) -> Path:
    from torchvision.datasets import FashionMNIST

    data_dir.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        FashionMNIST(root=str(data_dir), train=train, download=True)
    return data_dir / "FashionMNIST" / "raw"


def locate(data_dir: str | Path, download: bool = False) -> Path:
    """The folder to read from; downloads with torchvision if allowed and nothing is found."""
    folder = find(data_dir)
    if folder is None and download:
        try:
            _download(Path(data_dir))
        except (OSError, RuntimeError) as exc:  # no network, refused, checksum mismatch
            raise DatasetMissingError(f"{missing_error(data_dir)}\n(the download failed: {exc})") from exc
        folder = find(data_dir)
    if folder is None:
        raise missing_error(data_dir)
    return folder


def read_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 1, 28, 28] and int64 labels [N] of one split ("train" or "test")."""
    image_name, label_name = SPLIT_FILES[split]
    image_path, label_path = _file(folder, image_name), _file(folder, label_name)
    if image_path is None or label_path is None:
        raise DatasetMissingError(f"{folder}/ lacks the {split} split's {image_name} or {label_name}.")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != torch.uint8:
        raise CorruptFileError(f"{image_path}: expected uint8 images [N, H, W], got {images.dtype} {tuple(images.shape)}.")
    if labels.ndim != 1 or len(labels) != len(images):
        raise CorruptFileError(
            f"{label_path}: expected {len(images)} labels to match {image_path.name}, got shape {tuple(labels.shape)}."
        )
    return images.unsqueeze(1), labels.long()


def load(data_dir: str | Path, download: bool = False) -> Splits:
    folder = locate(data_dir, download)
    return Splits(*read_split(folder, "train"), *read_split(folder, "test"))


def prepare(data_dir: str | Path, download: bool = False) -> Path:
    """Make `<data_dir>/fashion-mnist/` hold the four files (copied from wherever they were found,
    atomically: into a temporary folder, then renamed) and check they parse; return it."""
    data_dir = Path(data_dir)
    target = data_dir / FOLDER
    source = locate(data_dir, download)
    if source != target:
        data_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=data_dir))
        try:
            for name in FILES:
                found = _file(source, name)
                assert found is not None
                shutil.copy2(found, staging / found.name)
            try:
                os.rename(staging, target)
            except OSError:  # the target exists (partly filled, or a concurrent prepare won)
                for item in staging.iterdir():
                    os.replace(item, target / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    for split in SPLIT_FILES:
        read_split(target, split)
    return target
