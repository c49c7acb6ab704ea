"""replicate.data: readers on tiny fakes, errors, He et al. 2016's augmentations and
normalisations, ImageNet pipelines, prepare(), and the real Fashion-MNIST where installed."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from replicate.data import DATASETS, build_datamodule, fashion_mnist, prepare
from replicate.data import transforms as T
from replicate.data.idx import read_idx
from replicate.errors import ConfigError, DatasetMissingError
from tests.fakes import (
    FASHION_FILES, write_cifar10, write_cifar100, write_corrupt_idx, write_idx, write_idx_fashion_mnist,
    write_imagenet_folder,
)

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def cfg(dataset: str, **overrides) -> dict:
    base = {
        "fashion_mnist": {"num_classes": 10, "channels": 1},
        "cifar10": {"num_classes": 10, "channels": 3},
        "cifar100": {"num_classes": 100, "channels": 3},
        "imagenet": {"num_classes": 3, "channels": 3, "image_size": 32, "scale_range": [36, 48], "eval_resize": 36},
    }[dataset]
    return {"name": dataset, "image_size": None, "train_subset": None, "test_subset": None, "download": False,
            **base, **overrides}


def build(dataset: str, data_dir, *, augment="none", normalize="none", batch_size=8, seed=0, **overrides):
    return build_datamodule(cfg(dataset, **overrides), data_dir=data_dir, batch_size=batch_size, augment=augment,
                            normalize=normalize, seed=seed)


@pytest.fixture
def no_system_fashion(tmp_path, monkeypatch):
    """Point the Debian-package lookup at an empty folder, whatever this machine has installed."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-dataset")


# -- IDX ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path, suffix):
    array = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    path = write_idx(tmp_path / f"a-idx3-ubyte{suffix}", array.numpy())
    out = read_idx(path)
    assert out.dtype == torch.uint8 and torch.equal(out, array)


@pytest.mark.parametrize("kind, words", [("magic", "magic number"), ("truncated", "truncated")])
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_corrupt_idx_names_the_file(tmp_path, kind, words, suffix):
    path = write_corrupt_idx(tmp_path / f"bad-idx3-ubyte{suffix}", kind)
    with pytest.raises(ValueError, match=words) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_corrupt_fashion_file_fails_setup_with_its_name(tmp_path, no_system_fashion):
    folder = write_idx_fashion_mnist(tmp_path)
    bad = write_corrupt_idx(folder / "train-images-idx3-ubyte.gz", "truncated")
    with pytest.raises(ValueError, match="truncated") as error:
        build("fashion_mnist", tmp_path).setup()
    assert str(bad) in str(error.value)


def test_not_gzip_is_a_value_error(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(ValueError, match=str(path)):
        read_idx(path)


# -- readers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reader(tmp_path, no_system_fashion, gz):
    write_idx_fashion_mnist(tmp_path, n_train=64, n_test=32, gz=gz)
    dm = build("fashion_mnist", tmp_path)
    assert dm.num_classes == 10 and dm.input_size == (1, 28, 28)  # known before setup
    dm.setup()
    s = dm.splits
    assert s.train_x.shape == (64, 1, 28, 28) and s.test_x.shape == (32, 1, 28, 28)
    assert s.train_x.dtype == torch.uint8 and s.train_y.dtype == torch.int64
    assert set(s.train_y.tolist()) == set(range(10))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert len(dm.train_dataloader()) == 8 and len(dm.val_dataloader()) == len(dm.test_dataloader()) == 4


@pytest.mark.parametrize("name, n_train, n_test, classes", [("cifar10", 100, 20, 10), ("cifar100", 40, 40, 100)])
def test_cifar_readers(tmp_path, name, n_train, n_test, classes):
    (write_cifar10 if name == "cifar10" else write_cifar100)(tmp_path)
    dm = build(name, tmp_path)
    assert dm.input_size == (3, 32, 32) and dm.num_classes == classes
    dm.setup()
    s = dm.splits
    assert s.train_x.shape == (n_train, 3, 32, 32) and s.test_x.shape == (n_test, 3, 32, 32)
    assert s.train_x.dtype == torch.uint8 and s.test_y.dtype == torch.int64
    assert 0 <= int(s.train_y.min()) and int(s.train_y.max()) < classes
    # Channel planes: the fakes darken the channel label % 3 (its band is 110, the others 220).
    band = s.train_x[0, :, :, :].amax(dim=(1, 2))
    assert int(band.argmin()) == int(s.train_y[0]) % 3


def test_subsets_are_deterministic_and_seeded(tmp_path, no_system_fashion):
    write_idx_fashion_mnist(tmp_path, n_train=64, n_test=32)

    def subset(seed):
        dm = build("fashion_mnist", tmp_path, seed=seed, train_subset=20, test_subset=10)
        dm.setup()
        return dm.splits

    a, b, c = subset(0), subset(0), subset(1)
    assert a.train_x.shape[0] == 20 and a.test_x.shape[0] == 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    # Shuffling is seeded too: the same first batch twice.
    first = [next(iter(build("fashion_mnist", tmp_path, seed=3).train_dataloader()))[1] for _ in range(2)]
    assert torch.equal(*first)


def test_resize_whole_dataset_once(tmp_path, no_system_fashion):
    write_idx_fashion_mnist(tmp_path)
    dm = build("fashion_mnist", tmp_path, image_size=16)
    assert dm.input_size == (1, 16, 16)
    dm.setup()
    assert dm.splits.train_x.shape[1:] == (1, 16, 16) and dm.splits.train_x.dtype == torch.uint8


# -- errors ---------------------------------------------------------------------------------------
def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, no_system_fashion):
    with pytest.raises(DatasetMissingError) as error:
        build("fashion_mnist", tmp_path / "data").setup()
    message = str(error.value)
    assert str(tmp_path / "data" / "fashion-mnist") in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "python -m replicate data fashion_mnist --download" in message
    assert all(name in message for name in FASHION_FILES)


@pytest.mark.parametrize("name, folder, archive", [
    ("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz"),
    ("cifar100", "cifar-100-python", "cifar-100-python.tar.gz"),
])
def test_missing_cifar_says_how_to_get_it(tmp_path, name, folder, archive):
    with pytest.raises(DatasetMissingError) as error:
        build(name, tmp_path).setup()
    message = str(error.value)
    assert str(tmp_path / folder) in message and archive in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    assert f"python -m replicate data {name} --download" in message


def test_incomplete_cifar_names_the_missing_batch(tmp_path):
    (write_cifar10(tmp_path) / "data_batch_3").unlink()
    with pytest.raises(DatasetMissingError, match="data_batch_3"):
        prepare("cifar10", tmp_path)


def test_missing_imagenet_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetMissingError) as error:
        build("imagenet", tmp_path).setup()
    message = str(error.value)
    assert "https://image-net.org" in message
    assert str(tmp_path / "imagenet" / "train") in message and "<wnid>/*.JPEG" in message


def test_bad_values_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.name") as error:
        build("fashion_mnist", tmp_path, name="fashion-mnist")
    assert "fashion_mnist" in str(error.value) and all(d in str(error.value) for d in DATASETS)
    with pytest.raises(ConfigError, match="augment.*Allowed: cifar, imagenet, inception, none"):
        build("cifar10", tmp_path, augment="autoaugment")
    with pytest.raises(ConfigError, match="normalize.*Allowed: channel_mean, none, per_pixel_mean"):
        build("cifar10", tmp_path, normalize="std")
    with pytest.raises(ConfigError, match="data.channels"):
        build("cifar10", tmp_path, channels=1)
    with pytest.raises(ConfigError, match="data.eval_crops"):
        build("imagenet", tmp_path, eval_crops=5)
    with pytest.raises(ConfigError, match="data.train_subset"):
        build("cifar10", tmp_path, train_subset=0)
    with pytest.raises(ConfigError, match="data.name"):
        prepare("mnist", tmp_path)


def test_num_classes_smaller_than_labels_is_a_config_error(tmp_path):
    write_cifar100(tmp_path)
    with pytest.raises(ConfigError, match="data.num_classes"):
        build("cifar100", tmp_path, num_classes=10).setup()


# -- augmentation and normalisation -----------------------------------------------------------------
def _shifted(image: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    return padded[..., pad + dy: pad + dy + h, pad + dx: pad + dx + w]


def test_cifar_augmentation_crops_and_flips_each_sample():
    image = torch.arange(1, 1 + 3 * 8 * 8, dtype=torch.float32).view(1, 3, 8, 8)  # every pixel unique
    batch = image.expand(256, -1, -1, -1).contiguous()
    out = T.pad_crop_flip(batch, 1, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape
    seen = set()
    for sample in out:
        matches = [(dy, dx, flip) for dy in (-1, 0, 1) for dx in (-1, 0, 1) for flip in (False, True)
                   if torch.equal(sample, _shifted(image[0].flip(-1) if flip else image[0], dy, dx, 1))]
        assert len(matches) == 1, "every output is one shifted (and maybe mirrored) copy, zero padded"
        seen.add(matches[0])
    assert len(seen) == 18  # all 9 offsets x {flip, no flip} occur: each sample draws its own


def test_cifar_augmentation_pad_is_an_eighth_of_the_size(tmp_path, no_system_fashion):
    write_idx_fashion_mnist(tmp_path)
    dm = build("fashion_mnist", tmp_path, image_size=16, augment="cifar")
    dm.setup()
    x = torch.zeros(512, 1, 16, 16, dtype=torch.uint8)
    x[:, :, 0, 0] = 255  # one bright corner pixel shows the shift
    out = dm.transform_batch(x, train=True)
    assert out.shape == (512, 1, 16, 16) and out.dtype == torch.float32
    rows, cols = out[:, 0].flatten(1).argmax(1) // 16, out[:, 0].flatten(1).argmax(1) % 16
    visible = out.flatten(1).amax(1) > 0
    assert int(rows[visible].max()) == 2  # moved by up to 16 / 8 = 2 pixels
    assert set(cols[visible].tolist()) >= {0, 2, 13, 15}  # shifted and mirrored
    assert torch.equal(dm.transform_batch(x, train=False), x.float() / 255)  # eval: untouched


def test_in_memory_imagenet_style_augmentation(tmp_path):
    write_cifar10(tmp_path)
    dm = build("cifar10", tmp_path, augment="imagenet", normalize="channel_mean")
    dm.setup()
    x = dm.splits.train_x[:16]
    out = dm.transform_batch(x, train=True)
    assert out.shape == (16, 3, 32, 32) and torch.isfinite(out).all()
    assert not torch.allclose(out, dm.transform_batch(x, train=False))


def test_lighting_shifts_colours_along_the_principal_components():
    x = torch.full((1000, 3, 2, 2), 0.5)
    out = T.lighting(x, 0.1, torch.Generator().manual_seed(0))
    delta = (out - x)[:, :, 0, 0]
    assert torch.allclose(out - x, delta[:, :, None, None].expand_as(x))  # one colour shift per image
    # Its spread along the first principal component is std * eigenvalue.
    first = delta @ torch.tensor(T.IMAGENET_PCA_EIGVEC)[:, 0]
    assert abs(float(first.std()) - 0.1 * T.IMAGENET_PCA_EIGVAL[0]) < 0.003


@pytest.mark.parametrize("normalize", ["per_pixel_mean", "channel_mean"])
def test_mean_subtraction_centres_the_training_set(tmp_path, no_system_fashion, normalize):
    write_cifar10(tmp_path)
    dm = build("cifar10", tmp_path, image_size=16, normalize=normalize)
    dm.setup()
    out = dm.transform_batch(dm.splits.train_x, train=False)
    if normalize == "per_pixel_mean":
        assert dm.mean.shape == (3, 16, 16)
        assert out.mean(0).abs().max() < 1e-5  # ~zero mean image, no std division
        assert torch.allclose(out + dm.mean, dm.splits.train_x.float() / 255, atol=1e-6)  # no std division
    else:
        assert dm.mean.shape == (3, 1, 1)
        assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5


def test_batch_hook_augments_only_while_training(tmp_path, no_system_fashion):
    write_idx_fashion_mnist(tmp_path)
    dm = build("fashion_mnist", tmp_path, augment="cifar", normalize="per_pixel_mean")
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    out, y2 = dm.on_after_batch_transfer((x, y), 0)  # no trainer attached: no augmentation
    assert torch.equal(out, dm.transform_batch(x, train=False)) and torch.equal(y, y2)


def test_inside_a_trainer_batches_arrive_as_float(tmp_path, no_system_fashion):
    import lightning as L

    write_idx_fashion_mnist(tmp_path, n_train=32, n_test=16)
    dm = build("fashion_mnist", tmp_path, image_size=16, augment="cifar", normalize="per_pixel_mean")
    seen: dict[str, torch.Tensor] = {}

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(256, 10)

        def training_step(self, batch, batch_idx):
            seen["train"] = batch[0]
            return torch.nn.functional.cross_entropy(self.layer(batch[0].flatten(1)), batch[1])

        def validation_step(self, batch, batch_idx):
            seen["val"] = batch[0]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(max_steps=2, limit_val_batches=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Probe(), datamodule=dm)
    assert seen["train"].dtype == seen["val"].dtype == torch.float32
    assert seen["train"].shape == (8, 1, 16, 16)
    val_x = dm.splits.test_x[:8]
    assert torch.equal(seen["val"], dm.transform_batch(val_x, train=False))  # validation is not augmented


# -- ImageNet ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("crops", [1, 10])
def test_imagenet_batches(tmp_path, crops):
    write_imagenet_folder(tmp_path, classes=3, per_class=4, size=40)
    dm = build("imagenet", tmp_path, augment="imagenet", normalize="channel_mean", eval_crops=crops)
    assert dm.input_size == (3, 32, 32) and dm.num_classes == 3
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() < 0  # mean subtracted
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == ((8, 10, 3, 32, 32) if crops == 10 else (8, 3, 32, 32))
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(dm.val_dataloader().dataset) == 12
    # Worker processes started by spawn/forkserver receive the datasets pickled.
    for dataset in (dm.train_set, dm.test_set):
        assert len(pickle.loads(pickle.dumps(dataset))) == 12


def test_imagenet_val_keeps_train_labels_when_a_class_is_absent(tmp_path):
    root = write_imagenet_folder(tmp_path, classes=3, per_class=2, size=40)
    shutil.rmtree(root / "val" / "n00000000")
    dm = build("imagenet", tmp_path)
    dm.setup()
    assert sorted({y for _, y in dm.test_set}) == [1, 2]


# -- prepare ---------------------------------------------------------------------------------------
def test_prepare_copies_fashion_mnist_from_the_system_folder(tmp_path, monkeypatch):
    system = write_idx_fashion_mnist(tmp_path / "usr")
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", system)
    data_dir = tmp_path / "data"
    folder = prepare("fashion_mnist", data_dir)
    assert folder == data_dir / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.gz" for n in FASHION_FILES)
    assert [p.name for p in data_dir.iterdir()] == ["fashion-mnist"]  # no staging folder left behind
    assert prepare("fashion_mnist", data_dir) == folder  # idempotent
    shutil.rmtree(system)
    dm = build("fashion_mnist", data_dir)
    dm.setup()
    assert len(dm.splits.train_y) == 64


def test_prepare_download_path_reads_torchvision_raw_folder(tmp_path, monkeypatch, no_system_fashion):
    calls = []

    def fake_download(data_dir):
        calls.append(data_dir)
        raw = data_dir / "FashionMNIST" / "raw"
        shutil.move(write_idx_fashion_mnist(tmp_path / "dl", gz=False), raw)
        return raw

    monkeypatch.setattr(fashion_mnist, "_download", fake_download)
    with pytest.raises(DatasetMissingError):
        prepare("fashion_mnist", tmp_path / "data")
    folder = prepare("fashion_mnist", tmp_path / "data", download=True)
    assert calls == [tmp_path / "data"] and folder == tmp_path / "data" / "fashion-mnist"
    assert len(list(folder.iterdir())) == 4


def test_prepare_cifar_and_imagenet(tmp_path):
    cifar10, cifar100 = write_cifar10(tmp_path), write_cifar100(tmp_path)
    assert prepare("cifar10", tmp_path) == cifar10 and prepare("cifar100", tmp_path) == cifar100
    write_imagenet_folder(tmp_path, classes=1, per_class=1)
    assert prepare("imagenet", tmp_path) == tmp_path / "imagenet"


# -- the real data set, where installed ------------------------------------------------------------
@pytest.mark.skipif(not all((REAL_FASHION / f"{n}.gz").exists() for n in FASHION_FILES),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", REAL_FASHION)
    dm = build("fashion_mnist", tmp_path, normalize="per_pixel_mean")
    dm.setup()
    s = dm.splits
    assert s.train_x.shape == (60000, 1, 28, 28) and s.test_x.shape == (10000, 1, 28, 28)
    assert torch.equal(s.train_y.bincount(), torch.full((10,), 6000))
    small = build("fashion_mnist", tmp_path, image_size=16, test_subset=100)
    small.setup()
    assert small.splits.train_x.shape == (60000, 1, 16, 16) and small.splits.test_x.shape == (100, 1, 16, 16)
    # Antialiased resizing keeps the overall brightness.
    assert abs(small.splits.train_x.float().mean() - s.train_x.float().mean()) < 1.0


@pytest.mark.parametrize("batch_size,drop_last", [(4, True), (5, False)])
def test_epoch_sampler_draws_the_shuffled_loaders_order_and_resumes_mid_epoch(batch_size, drop_last):
    """`EpochSampler` gives the order of DataLoader(shuffle=True, generator seeded) epoch by epoch
    (the numbers runs gave before it existed), and a resumed one starts on the next batch."""
    from torch.utils.data import DataLoader

    from replicate.data.sampler import EpochSampler

    items = list(range(37))
    plain = DataLoader(items, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                       generator=torch.Generator().manual_seed(3))
    sampler = EpochSampler(len(items), seed=3)
    ours = DataLoader(items, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    epochs = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        epochs.append([b.tolist() for b in ours])
        assert epochs[-1] == [b.tolist() for b in plain]
    assert epochs[1] != epochs[2]
    fresh = EpochSampler(len(items), seed=3)  # a restarted process, resumed after 3 batches of epoch 2
    fresh.resume_at(2, 3, batch_size)
    fresh.set_epoch(2)
    resumed = DataLoader(items, batch_size=batch_size, sampler=fresh, drop_last=drop_last)
    assert [b.tolist() for b in resumed] == epochs[2][3:]
    assert [b.tolist() for b in resumed] == epochs[2]  # only the first iteration skips


def test_imagenet_augmentation_is_the_same_with_any_workers_and_after_a_mid_epoch_resume(tmp_path):
    """Loaders with worker processes: each sample's augmentation comes from (seed, epoch, index),
    so two workers give what none gives, and a loader resumed after 1 batch of epoch 1 gives
    the rest of that epoch's batches, augmentations included."""
    write_imagenet_folder(tmp_path, classes=3, per_class=4, size=40)

    def epochs(workers, resume=None):
        dm = build("imagenet", tmp_path, augment="imagenet", normalize="channel_mean", batch_size=4)
        dm.num_workers = workers
        dm.setup()
        if resume is not None:
            dm.order.load_state_dict({"epoch": 1, "batches": resume})
        loader = dm.train_dataloader()
        seen = []
        for epoch in ((1,) if resume is not None else (0, 1)):
            loader.sampler.set_epoch(epoch)
            seen.append([x for x, _ in loader])
        return seen

    none, two = epochs(0), epochs(2)
    assert all(torch.equal(a, b) for e in range(2) for a, b in zip(none[e], two[e], strict=True))
    assert not torch.equal(none[0][0], none[1][0])  # another epoch, other augmentations
    resumed = epochs(2, resume=1)[0]
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(resumed, none[1][1:], strict=True))
