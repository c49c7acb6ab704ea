"""The YOLO papers' training augmentation (replicate/data/detection/augment.py): HSV saturation
and exposure against colorsys, boxes that follow the pixels under random scaling and translation,
per-box fields dropped with their boxes, the recipes' values through the real VOC reader, and
clear errors for bad settings."""

from __future__ import annotations

import colorsys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from replicate.data.detection import build_detection_datamodule, build_transform, make_target
from replicate.data.detection.augment import DetectionAugment, RandomHSV, random_scale_factor, scale_saturation
from replicate.errors import ConfigError
from tests.data.test_detection_data import write_voc

ROOT = Path(__file__).resolve().parents[2]


def test_saturation_scales_hsv_s_and_keeps_hue_and_value():
    rgb = torch.tensor([0.8, 0.4, 0.2]).view(3, 1, 1)
    out = scale_saturation(rgb, 0.5).flatten().tolist()
    h0, s0, v0 = colorsys.rgb_to_hsv(0.8, 0.4, 0.2)
    h1, s1, v1 = colorsys.rgb_to_hsv(*out)
    assert out == pytest.approx([0.8, 0.6, 0.5])
    assert (h1, s1, v1) == pytest.approx((h0, s0 * 0.5, v0))
    # Past full saturation the smallest channel is clipped at 0, as Darknet clips.
    assert scale_saturation(rgb, 1.5).flatten().tolist() == pytest.approx([0.8, 0.2, 0.0])


def test_scale_factors_span_both_directions():
    generator = torch.Generator().manual_seed(0)
    factors = torch.tensor([random_scale_factor(1.5, generator) for _ in range(400)])
    assert float(factors.min()) >= 1 / 1.5 - 1e-6 and float(factors.max()) <= 1.5 + 1e-6
    assert float((factors < 1).float().mean()) == pytest.approx(0.5, abs=0.1)
    assert float(factors.max()) > 1.4 and float(factors.min()) < 1 / 1.4


def test_hsv_moves_pixels_not_boxes():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.rand(3, 8, 8))
    target = make_target(torch.tensor([[1.0, 1.0, 5.0, 6.0]]), torch.tensor([3]), (8, 8), 0)
    out_image, out_target = RandomHSV(hue=0.1, saturation=1.5, exposure=1.5)(image, target)
    assert isinstance(out_image, tv_tensors.Image) and not torch.equal(out_image, image)
    assert float(out_image.min()) >= 0.0 and float(out_image.max()) <= 1.0
    assert torch.equal(out_target["boxes"], target["boxes"])
    with pytest.raises(TypeError, match="ToDtype"):
        RandomHSV(saturation=1.5)(tv_tensors.Image(torch.zeros(3, 4, 4, dtype=torch.uint8)))


def _white_box_image(box: tuple[int, int, int, int], h: int = 96, w: int = 128) -> tv_tensors.Image:
    pixels = torch.zeros(3, h, w, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    pixels[:, y0:y1, x0:x1] = 255
    return tv_tensors.Image(pixels)


@pytest.mark.parametrize("seed", range(8))
def test_scaled_and_shifted_boxes_follow_their_pixels(seed):
    torch.manual_seed(seed)
    box = (30, 20, 70, 60)
    image = _white_box_image(box)
    target = make_target(torch.tensor([box], dtype=torch.float32), torch.tensor([2]), (96, 128), 7)
    steps = v2.Compose(DetectionAugment(scale=0.2, translate=0.2).geometric())
    out_image, out_target = steps(image, target)
    assert out_image.shape == image.shape
    white = (out_image[0] > 200).nonzero()
    boxes = out_target["boxes"].as_subclass(torch.Tensor)
    if white.numel() == 0:  # moved out of the frame: the box goes with it
        assert boxes.shape[0] == 0
        return
    seen = torch.tensor([white[:, 1].min(), white[:, 0].min(), white[:, 1].max() + 1, white[:, 0].max() + 1],
                        dtype=torch.float32)
    assert boxes.shape == (1, 4)
    torch.testing.assert_close(boxes[0], seen, atol=1.5, rtol=0)


def test_boxes_pushed_out_are_dropped_with_their_fields():
    image = _white_box_image((2, 2, 10, 10))
    boxes = torch.tensor([[2.0, 2.0, 10.0, 10.0], [60.0, 40.0, 90.0, 70.0]])
    target = make_target(boxes, torch.tensor([4, 9]), (96, 128), 1, difficult=torch.tensor([True, False]))
    # A shift of a quarter of the width to the left, then the augmentation's sanitising step.
    moved = {**target, "boxes": TF.affine(target["boxes"], angle=0.0, translate=[-32, 0], scale=1.0, shear=[0.0, 0.0])}
    sanitize = DetectionAugment(scale=0.1).geometric()[1]
    _, out = sanitize(TF.affine(image, angle=0.0, translate=[-32, 0], scale=1.0, shear=[0.0, 0.0]), moved)
    assert out["labels"].tolist() == [9]
    assert out["difficult"].tolist() == [False] and out["iscrowd"].tolist() == [False] and len(out["area"]) == 1
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), torch.tensor([[28.0, 40.0, 58.0, 70.0]]))


@pytest.mark.parametrize("recipe", ["yolov1_voc", "yolov2_voc", "yolov3_coco", "yolov4_coco"])
def test_yolo_recipes_augment_through_the_voc_reader(tmp_path, recipe):
    write_voc(tmp_path)
    augment = OmegaConf.load(ROOT / "conf" / "recipe" / f"{recipe}.yaml").detection_augment
    data = dict(OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / "voc2007.yaml")),
                train=["2007/trainval"], test="2007/trainval", download=False, min_size=None, max_size=None,
                normalize="none")
    dm = build_detection_datamodule(data, data_dir=tmp_path, batch_size=2, augment=augment)
    with pytest.warns(UserWarning):
        dm.setup()
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="unreadable image"):
        samples = [dm.train_set[index] for index in range(len(dm.train_set))]
    assert sum(sample is None for sample in samples) == 1  # the garbage JPEG: dropped by `collate`
    for sample in samples:
        if sample is None:
            continue
        image, target = sample
        assert image.dtype == torch.float32 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        n = len(target["boxes"])
        assert all(len(target[key]) == n for key in ("labels", "difficult", "iscrowd", "area"))
        assert not target["difficult"].any()  # still dropped after the augmentation
    # The test set is never augmented: the same pixels every time.
    first, again = dm.test_set[0][0], dm.test_set[0][0]
    assert torch.equal(first, again)


def test_bad_augment_settings_name_the_key():
    assert DetectionAugment.from_config(None) is None
    with pytest.raises(ConfigError, match=r"recipe.detection_augment: unknown key\(s\) jitter. Allowed"):
        DetectionAugment.from_config({"jitter": 0.2})
    with pytest.raises(ConfigError, match=r"recipe.detection_augment.saturation=0.5 is out of range: >= 1"):
        DetectionAugment.from_config({"saturation": 0.5})
    with pytest.raises(ConfigError, match=r"recipe.detection_augment.hue='a' is not a number"):
        DetectionAugment.from_config({"hue": "a"})
    with pytest.raises(ConfigError, match="scale=1.5 is out of range"):
        build_detection_datamodule({"name": "synth_detection", "num_classes": 10, "train": "train", "test": "test"},
                                   data_dir=".", batch_size=2, augment={"scale": 1.5})


def test_augmentation_is_off_without_a_recipe_entry():
    steps = build_transform(train=True, min_size=None, max_size=None, flip=False, normalize="none")
    assert [type(step).__name__ for step in steps.transforms] == ["ToDtype"]
    steps = build_transform(train=True, min_size=None, max_size=None, flip=True, normalize="none",
                            augment=DetectionAugment(scale=0.2, translate=0.2, saturation=1.5, exposure=1.5))
    assert [type(step).__name__ for step in steps.transforms] == [
        "RandomAffine", "SanitizeBoundingBoxes", "RandomHorizontalFlip", "ToDtype", "RandomHSV"]
