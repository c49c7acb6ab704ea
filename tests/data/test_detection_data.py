"""Detection data: the VOC and COCO readers on tiny on-disk fakes (a difficult box, corrupt
files), the generated reduced set (determinism, both readers agree), collation of
variable-size images, the datamodule, the DetectionTask with a tiny detector, and the plots."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset

from replicate.data import fashion_mnist, prepare
from replicate.data.detection import batch_images, build_detection_datamodule, collate, skipped_files, synth
from replicate.data.detection.base import SkippedFileWarning, drop_flagged
from replicate.data.detection.coco import COCODetection
from replicate.data.detection.coco import locate as coco_locate
from replicate.data.detection.voc import CLASSES, VOCDetection
from replicate.data.detection.voc import locate as voc_locate
from replicate.errors import ConfigError, DatasetMissingError
from replicate.ops import box_iou
from replicate.tasks.detection import DetectionTask, to_original_size
from tests.fakes import write_idx_fashion_mnist

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[2]


# -- fakes --------------------------------------------------------------------------------------
def _jpeg(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def _voc_xml(filename: str, h: int, w: int, objects) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{int(diff)}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b, diff in objects
    )
    return (f"<annotation><folder>VOC2007</folder><filename>{filename}</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size><segmented>0</segmented>{body}</annotation>")


def write_voc(data_dir: Path) -> Path:
    """data_dir/VOCdevkit/VOC2007 with four trainval images: two good ones of different sizes (one
    with a difficult box, one with a box a pixel past the border), one with a truncated XML, one
    whose JPEG is garbage."""
    root = data_dir / "VOCdevkit" / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    _jpeg(root / "JPEGImages" / "000001.jpg", 40, 60, 1)
    _jpeg(root / "JPEGImages" / "000002.jpg", 50, 30, 2)
    _jpeg(root / "JPEGImages" / "000003.jpg", 40, 40, 3)
    (root / "JPEGImages" / "000004.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "Annotations" / "000001.xml").write_text(_voc_xml(
        "000001.jpg", 40, 60, [("dog", (5, 6, 20, 30), False), ("cat", (30, 1, 60, 40), True)]))
    annotations = root / "Annotations"
    (annotations / "000002.xml").write_text(_voc_xml("000002.jpg", 50, 30, [("person", (0, 1, 31, 50), False)]))
    (annotations / "000003.xml").write_text(_voc_xml("000003.jpg", 40, 40, [("dog", (1, 1, 9, 9), False)])[:70])
    (root / "Annotations" / "000004.xml").write_text(_voc_xml("000004.jpg", 40, 40, [("bus", (2, 2, 9, 9), False)]))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n000003\n000004\n")
    return root


def write_coco(data_dir: Path) -> tuple[Path, Path]:
    """data_dir/coco/val2017 with three images (one unreadable) and sparse category ids 3 and 7;
    one annotation has an empty box, one is a crowd region."""
    images_dir = data_dir / "coco" / "val2017"
    _jpeg(images_dir / "a.jpg", 40, 50, 4)
    _jpeg(images_dir / "b.jpg", 30, 30, 5)
    (images_dir / "c.jpg").write_bytes(b"garbage")
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2.5, 3.0, 10.0, 20.0], "area": 150.0, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 50, 40], "area": 1500.0, "iscrowd": 1},
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [5, 5, 0, 10], "area": 0.0, "iscrowd": 0},
        {"id": 4, "image_id": 11, "category_id": 3, "bbox": [1, 2, 3, 4], "area": 12.0, "iscrowd": 0},
        {"id": 5, "image_id": 12, "category_id": 7, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 0},
    ]
    coco = {
        "images": [{"id": 10, "file_name": "a.jpg", "height": 40, "width": 50},
                   {"id": 11, "file_name": "b.jpg", "height": 30, "width": 30},
                   {"id": 12, "file_name": "c.jpg", "height": 30, "width": 30}],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "zebra"}, {"id": 3, "name": "car"}],
    }
    path = data_dir / "coco" / "annotations" / "instances_val2017.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(coco))
    return images_dir, path


SMALL = {"seed": 3, "train_images": 10, "test_images": 6, "image_size": [64, 80], "objects": [2, 4],
         "object_size": [14, 40], "aspect": [0.67, 1.5], "max_overlap": 0.35, "difficult_visibility": 0.5}


@pytest.fixture
def fashion(tmp_path, monkeypatch):
    """A tiny Fashion-MNIST in tmp_path/fashion-mnist (and not the system one)."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-dataset")
    write_idx_fashion_mnist(tmp_path)
    return tmp_path


# -- VOC ----------------------------------------------------------------------------------------
def test_voc_reader_targets_difficult_and_corrupt_files(tmp_path):
    root = write_voc(tmp_path)
    with pytest.warns(SkippedFileWarning, match="000003.xml"):
        dataset = VOCDetection(root, "trainval")
    assert len(dataset) == 3 and len(dataset.skipped) == 1 and dataset.class_names == list(CLASSES)
    image, target = dataset[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 40, 60)
    # 1-based inclusive pixels -> continuous: (xmin - 1, ymin - 1, xmax, ymax).
    assert target["boxes"].tolist() == [[4.0, 5.0, 20.0, 30.0], [29.0, 0.0, 60.0, 40.0]]
    assert target["labels"].tolist() == [CLASSES.index("dog") + 1, CLASSES.index("cat") + 1]
    assert target["difficult"].tolist() == [False, True] and target["labels"].dtype == torch.int64
    assert target["orig_size"].tolist() == [40, 60] and target["area"].tolist() == [16 * 25, 31 * 40]
    assert tuple(dataset[1][0].shape) == (3, 50, 30)
    assert dataset.target(1)["boxes"].tolist() == [[0.0, 0.0, 30.0, 50.0]]  # a pixel past the border: clipped
    # The garbage JPEG is skipped with a warning naming it: dropped, no other image in its place.
    with pytest.warns(SkippedFileWarning, match="000004.jpg"):
        assert dataset[2] is None
    assert len(dataset.skipped) == 2 and "000004.jpg" in skipped_files(Subset(dataset, [0, 2]))[1]
    # A whole epoch runs through it, variable sizes collated as lists, the broken image left out.
    images, targets = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate)))
    assert [tuple(im.shape) for im in images] == [(3, 40, 60), (3, 50, 30)] and len(targets) == 2
    assert len(dataset.skipped) == 2  # reported once per file
    image, target = dataset[0]
    padded, sizes = batch_images([im.float() for im in images], size_divisible=16)
    assert padded.shape == (2, 3, 64, 64) and sizes[1] == (50, 30) and padded[1, :, 50:, :].abs().sum() == 0
    assert drop_flagged(target)["labels"].tolist() == [CLASSES.index("dog") + 1]


def test_voc_image_size_differing_from_its_annotation(tmp_path):
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    _jpeg(root / "JPEGImages" / "a.jpg", 20, 30, 6)
    (root / "Annotations" / "a.xml").write_text(_voc_xml("a.jpg", 40, 40, [("cow", (5, 5, 40, 40), False)]))
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\n")
    dataset = VOCDetection(root, "test")
    with pytest.warns(SkippedFileWarning, match="a.jpg.*using the image's size"):
        image, target = dataset[0]
    assert tuple(image.shape) == (3, 20, 30) and target["orig_size"].tolist() == [20, 30]
    assert target["boxes"].tolist() == [[4.0, 4.0, 30.0, 20.0]]


def test_voc_missing_says_what_to_download(tmp_path):
    with pytest.raises(DatasetMissingError, match="VOCtest_06-Nov-2007.tar") as error:
        voc_locate(tmp_path, "2007", "test")
    assert str(tmp_path / "VOCdevkit" / "VOC2007") in str(error.value)
    with pytest.raises(DatasetMissingError, match="VOCtrainval_06-Nov-2007.tar"):
        prepare("voc2007", tmp_path)


# -- COCO ---------------------------------------------------------------------------------------
def test_coco_reader(tmp_path):
    images_dir, annotations = write_coco(tmp_path)
    assert coco_locate(tmp_path, "val2017") == (images_dir, annotations)
    with pytest.warns(SkippedFileWarning, match=r"instances_val2017.json.*annotation 3"):
        dataset = COCODetection(images_dir, annotations)
    assert dataset.category_ids == [3, 7] and dataset.class_names == ["car", "zebra"]
    assert len(dataset) == 3 and len(dataset.skipped) == 1
    image, target = dataset[0]
    assert tuple(image.shape) == (3, 40, 50) and target["image_id"] == 10
    assert target["boxes"].tolist() == [[2.5, 3.0, 12.5, 23.0], [0.0, 0.0, 50.0, 40.0]]
    assert target["labels"].tolist() == [2, 1] and target["iscrowd"].tolist() == [False, True]
    assert target["area"].tolist() == [150.0, 1500.0] and target["difficult"].tolist() == [False, False]
    assert dataset.target(1)["boxes"].tolist() == [[1.0, 2.0, 4.0, 6.0]]
    with pytest.warns(SkippedFileWarning, match="c.jpg"):
        assert dataset[2] is None  # dropped, not replaced by another image
    assert len(dataset.skipped) == 2
    assert drop_flagged(target, ("iscrowd",))["labels"].tolist() == [2]


def test_coco_missing_and_corrupt(tmp_path):
    with pytest.raises(DatasetMissingError, match="cocodataset.org"):
        prepare("coco", tmp_path)
    images_dir, annotations = write_coco(tmp_path)
    annotations.write_text('{"images": [')
    with pytest.raises(ValueError, match="instances_val2017.json"):
        COCODetection(images_dir, annotations)


# -- the generated set --------------------------------------------------------------------------
def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_is_deterministic_and_both_readers_agree(fashion, tmp_path):
    params = synth.params_from_config(SMALL)
    first = _files(synth.ensure(fashion, params))
    for other in (tmp_path / "b", tmp_path / "c"):
        write_idx_fashion_mnist(other)
    second = _files(synth.ensure(tmp_path / "b", params))
    assert first == second and len(first) == 2 * 16 + 2 + 2 + 1  # images, XMLs, 2 lists, 2 JSON, meta
    third = _files(synth.ensure(tmp_path / "c", synth.params_from_config({**SMALL, "seed": 4})))
    assert third["JPEGImages/train_000000.jpg"] != first["JPEGImages/train_000000.jpg"]

    root = synth.folder(fashion)
    for split in synth.SPLITS:
        via_voc = VOCDetection(root, split, classes=synth.CLASSES)
        via_coco = COCODetection(root / "JPEGImages", root / "annotations" / f"instances_{split}.json")
        assert len(via_voc) == len(via_coco) == (10 if split == "train" else 6)
        assert via_coco.class_names == list(synth.CLASSES)
        counts = []
        for i in range(len(via_voc)):
            a, b = via_voc.target(i), via_coco.target(i)
            for key in ("boxes", "labels", "difficult", "orig_size"):
                assert torch.equal(a[key], b[key]), (split, i, key)
            boxes = a["boxes"]
            assert ((boxes[:, 2:] > boxes[:, :2]) & (boxes[:, :2] >= 0)).all()
            assert (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 64).all()
            assert ((boxes[:, 2:] - boxes[:, :2]).max(1).values <= 40).all()
            assert ((1 <= a["labels"]) & (a["labels"] <= 10)).all()
            counts.append(len(a["labels"]))
        assert 1 <= min(counts) and max(counts) <= 4
        image, _ = via_voc[0]
        assert tuple(image.shape) == (3, 64, 80)


def test_synth_objects_overlap_sometimes_and_vary_in_size(fashion):
    params = synth.params_from_config({**SMALL, "train_images": 40})
    dataset = VOCDetection(synth.ensure(fashion, params), "train", classes=synth.CLASSES)
    overlapping, sides = 0, []
    for i in range(len(dataset)):
        boxes = dataset.target(i)["boxes"]
        iou = torch.triu(box_iou(boxes, boxes), diagonal=1)
        overlapping += int((iou > 0).sum())
        sides += (boxes[:, 2:] - boxes[:, :2]).max(1).values.tolist()
    assert overlapping >= 3
    assert min(sides) < 20 and max(sides) > 30


def test_synth_is_cached_and_regenerated_on_change(fashion):
    params = synth.params_from_config(SMALL)
    root = synth.ensure(fashion, params)
    stamp = (root / "meta.json").stat().st_mtime_ns
    assert synth.ensure(fashion, params) == root and (root / "meta.json").stat().st_mtime_ns == stamp
    synth.ensure(fashion, synth.params_from_config({**SMALL, "test_images": 3}))
    assert len((root / "ImageSets" / "Main" / "test.txt").read_text().split()) == 3
    with pytest.raises(ConfigError, match="unknown keys"):
        synth.params_from_config({"seeds": 1})


def test_synth_config_matches_the_generator_defaults():
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "synth_detection.yaml")
    assert synth.params_from_config(cfg.synth) == synth.SynthParams()
    assert cfg.num_classes == len(synth.CLASSES)


def test_synth_needs_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "none")
    with pytest.raises(DatasetMissingError, match="Fashion-MNIST"):
        prepare("synth_detection", tmp_path)


# -- datamodule, task, plots ------------------------------------------------------------------
def synth_cfg(**overrides) -> dict:
    return {"name": "synth_detection", "format": "voc", "num_classes": 10, "train": "train", "test": "test",
            "min_size": None, "max_size": None, "flip": True, "normalize": "channel_mean",
            "train_drop": ["difficult"], "synth": SMALL, **overrides}


@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_datamodule_scales_boxes_with_images(fashion, fmt):
    dm = build_detection_datamodule(synth_cfg(format=fmt, min_size=96, max_size=200, flip=False), data_dir=fashion,
                                    batch_size=2)
    dm.setup()
    assert dm.class_names == list(synth.CLASSES)
    images, targets = next(iter(dm.test_dataloader()))
    assert len(images) == 2 and tuple(images[0].shape) == (3, 96, 120) and images[0].dtype == torch.float32
    raw = dm.test_set.target(0)
    torch.testing.assert_close(targets[0]["boxes"].as_subclass(torch.Tensor), raw["boxes"] * 1.5)
    back = to_original_size(targets[0], (96, 120))
    torch.testing.assert_close(back["boxes"], raw["boxes"].as_subclass(torch.Tensor))
    with pytest.raises(ConfigError, match="format"):
        build_detection_datamodule(synth_cfg(format="yolo"), data_dir=fashion, batch_size=2)


def test_voc2007_config_reads_the_devkit_layout(tmp_path):
    write_voc(tmp_path)
    cfg = dict(OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / "voc2007.yaml")),
               train=["2007/trainval", "2007/trainval"], test="2007/trainval", download=False)
    dm = build_detection_datamodule(cfg, data_dir=tmp_path, batch_size=2)
    with pytest.warns(SkippedFileWarning):
        dm.setup()
    assert dm.class_names == list(CLASSES) and len(dm.train_set) == 6 and len(dm.test_set) == 3
    images, targets = dm.test_set[0]
    # Shorter side to 600 unless the longer would pass 1000: 40 x 60 -> 600 x 900.
    assert tuple(images.shape) == (3, 600, 900) and targets["difficult"].tolist() == [False, True]
    _, train_target = dm.train_set[0]
    assert train_target["difficult"].tolist() == [False]  # difficult objects left out of training
    with pytest.raises(ConfigError, match="year"):
        build_detection_datamodule({**cfg, "train": "2009trainval"}, data_dir=tmp_path, batch_size=2)


class TinyDetector(nn.Module):
    """One box per image from pooled features: enough to exercise the task's contract."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.cls = nn.Linear(8, num_classes + 1)
        self.box = nn.Linear(8, 4)

    def forward(self, images, targets=None):
        feats = torch.stack([F.relu(self.features(im)).mean((1, 2)) for im in images])
        logits, raw = self.cls(feats), torch.sigmoid(self.box(feats))
        sizes = torch.tensor([[im.shape[-1], im.shape[-2]] * 2 for im in images], dtype=torch.float32)
        x1y1 = raw[:, :2] * 0.5
        boxes = torch.cat([x1y1, x1y1 + raw[:, 2:] * 0.5], 1) * sizes
        if self.training:
            labels = torch.stack([t["labels"][0] for t in targets])
            truth = torch.stack([t["boxes"][0].as_subclass(torch.Tensor) for t in targets])
            return {"loss_cls": F.cross_entropy(logits, labels),
                    "loss_box": F.smooth_l1_loss(boxes / sizes, truth / sizes)}
        scores, labels = logits.softmax(1)[:, 1:].max(1)
        return [{"boxes": b[None], "scores": s[None], "labels": lab[None] + 1}
                for b, s, lab in zip(boxes, scores, labels)]


def test_detection_task_trains_and_scores(fashion, tmp_path):
    dm = build_detection_datamodule(synth_cfg(), data_dir=fashion, batch_size=2)
    recipe = OmegaConf.create({"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                               "schedule": "multistep", "milestones": [0.5], "gamma": 0.1, "max_steps": 4})
    task = DetectionTask(TinyDetector(10), recipe, num_classes=10, protocol="voc07")
    before = [p.detach().clone() for p in task.parameters()]
    trainer = L.Trainer(accelerator="cpu", max_steps=4, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    assert any(not torch.equal(a, b) for a, b in zip(before, task.parameters()))
    assert {"train/loss", "train/loss_cls", "train/loss_box", "lr"} <= set(trainer.logged_metrics)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.001)  # after the 0.5 milestone
    metrics = trainer.test(task, datamodule=dm, verbose=False)[0]
    assert 0.0 <= metrics["test/map"] <= 1.0
    result = task.results["test"]
    assert set(result["per_class"]) <= set(synth.CLASSES) and result["protocol"] == "voc07"
    predictions, targets = task.detections["test"]
    assert len(predictions) == len(targets) == 6
    class NoLosses(nn.Module):
        def forward(self, images, targets=None):
            return images

    with pytest.raises(TypeError, match="dict of losses"):
        DetectionTask(NoLosses(), recipe, num_classes=10).training_step(([torch.zeros(3, 4, 4)], [{}]), 0)


def test_plots_draw_truth_and_detections(tmp_path):
    from replicate.report.plots import draw_dataset_detections

    root = write_voc(tmp_path)
    with pytest.warns(SkippedFileWarning):
        dataset = VOCDetection(root, "trainval")
    predictions = [{"boxes": torch.tensor([[4.0, 5.0, 20.0, 30.0], [0, 0, 5, 5]]), "scores": torch.tensor([0.9, 0.1]),
                    "labels": torch.tensor([12, 3])}, {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                                       "labels": torch.zeros(0, dtype=torch.int64)}]
    fig, data = draw_dataset_detections(dataset, [0, 1], predictions, score_threshold=0.5)
    assert (data["kind"] == "truth").sum() == 3 and (data["kind"] == "detection").sum() == 1
    assert data.loc[data["kind"] == "detection", "class"].item() == "dog"
    fig.savefig(tmp_path / "detections.png")
    matplotlib.pyplot.close(fig)


def test_detection_learning_rate_schedules_warm_up_then_step_or_cosine():
    from replicate.tasks.detection import lr_factor

    steps = lr_factor(OmegaConf.create({"max_steps": 100, "milestones": [0.6, 0.8], "gamma": 0.1}))
    assert [steps(t) for t in (0, 59, 60, 80, 99)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])
    # YOLOv1 Sec. 2.2: raise 1e-3 -> 1e-2 (factor 0.1 -> 1) over the first steps, linearly.
    warm = lr_factor(OmegaConf.create({"max_steps": 100, "warmup_steps_fraction": 0.1, "warmup_start_factor": 0.1,
                                       "milestones": [0.5]}))
    assert [warm(t) for t in (0, 5, 10, 49, 50)] == pytest.approx([0.1, 0.55, 1.0, 1.0, 0.1])
    # Darknet's burn-in: (t / T)^4; then a cosine to zero at max_steps (YOLOv4 Sec. 3.2).
    cosine = lr_factor(OmegaConf.create({"max_steps": 110, "schedule": "cosine", "warmup_steps_fraction": 10 / 110,
                                         "warmup_power": 4}))
    assert [cosine(t) for t in (5, 10, 60, 110)] == pytest.approx([0.0625, 1.0, 0.5, 0.0], abs=1e-9)
    with pytest.raises(ConfigError, match="Allowed: multistep, cosine"):
        lr_factor(OmegaConf.create({"max_steps": 10, "schedule": "plateau"}))
