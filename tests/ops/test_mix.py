"""YOLOv4's Mosaic (Sec. 3.3) and CutMix for detection (Sec. 2.2): boxes stay consistent with
the pixels they label, the drop rule holds exactly, per-box fields stay aligned, determinism.

The images are made of solid rectangles, one colour per label (labels unique in the whole
batch), on a background colour unique to each image, so the pixels tell where every object and
every source image ended up."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from replicate.ops.mix import covered_part, cutmix, mosaic


def colour(label: int) -> torch.Tensor:
    return torch.tensor([label / 100.0, 0.75, 1.0 - label / 100.0])


def background(index: int) -> torch.Tensor:
    return torch.tensor([0.0, (index + 1) / 10.0, 0.0])


def make_batch(sizes, seed=0, boxes_type="bounding_boxes", objects=3, step=(1, 1)):
    """Images [3, H, W] with `objects` non-overlapping solid rectangles each (integer corners,
    multiples of `step` = (sy, sx)), labels 1.. unique over the batch."""
    g = torch.Generator().manual_seed(seed)
    images, targets, label = [], [], 1
    for index, (h, w) in enumerate(sizes):
        image = background(index)[:, None, None].expand(3, h, w).clone()
        boxes, labels = [], []
        # Non-overlap: each object lives in its own vertical band of the image.
        band = w // objects
        for k in range(objects):
            sy, sx = step
            bw = max(sx, int(torch.randint(4, max(5, band - 2), (1,), generator=g)) // sx * sx)
            bh = max(sy, int(torch.randint(4, h // 2, (1,), generator=g)) // sy * sy)
            x0 = -(-(k * band + int(torch.randint(0, max(1, band - bw), (1,), generator=g))) // sx) * sx
            y0 = int(torch.randint(0, h - bh, (1,), generator=g)) // sy * sy
            image[:, y0:y0 + bh, x0:x0 + bw] = colour(label)[:, None, None]
            boxes.append([x0, y0, x0 + bw, y0 + bh])
            labels.append(label)
            label += 1
        boxes = torch.tensor(boxes, dtype=torch.float32)
        labels = torch.tensor(labels, dtype=torch.int64)
        if boxes_type == "bounding_boxes":
            boxes = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w))
        targets.append({"boxes": boxes, "labels": labels, "difficult": labels % 2 == 0,
                        "area": torch.zeros(len(labels)), "image_id": 100 + index,
                        "orig_size": torch.tensor([h, w])})
        images.append(image)
    return images, targets


def mask_of(image: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return (image == value[:, None, None]).all(dim=0)


def bbox_of(mask: torch.Tensor) -> list[int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def check_consistent(image, target, num_labels, original_area):
    """Every box is the bounding box of its object's visible pixels and passes the keep rule;
    an object without a box is visible only below the rule."""
    boxes = torch.as_tensor(target["boxes"]).as_subclass(torch.Tensor)
    labels = target["labels"].tolist()
    assert len(set(labels)) == len(labels)
    for label in range(1, num_labels + 1):
        mask = mask_of(image, colour(label))
        if label in labels:
            box = boxes[labels.index(label)]
            assert torch.equal(box, box.round()), box
            x0, y0, x1, y1 = (int(v) for v in box.tolist())
            assert bbox_of(mask) == [x0, y0, x1, y1]
            # Kept only above the rule: at least 2 px each way and 20 % of the object visible.
            assert x1 - x0 >= 2 and y1 - y0 >= 2 and int(mask.sum()) >= 0.2 * original_area[label] - 1e-4
        elif mask.any():
            x0, y0, x1, y1 = bbox_of(mask)
            # The module's rule: thinner than 2 px or under 20 % of the object's area visible.
            dropped_by_rule = x1 - x0 < 2 or y1 - y0 < 2 or int(mask.sum()) < 0.2 * original_area[label]
            assert dropped_by_rule, (label, int(mask.sum()), original_area[label])


def areas(targets, factor=1.0):
    """Each label's box area in the sources, times `factor` (the resize's area ratio)."""
    out = {}
    for t in targets:
        b = torch.as_tensor(t["boxes"]).as_subclass(torch.Tensor)
        for label, a in zip(t["labels"].tolist(), ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).tolist()):
            out[label] = a * factor
    return out


# -- Mosaic -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_mosaic_boxes_match_pixels_and_drop_rule(seed):
    size = 64
    images, targets = make_batch([(size, size)] * 5, seed=seed)
    out_images, out_targets = mosaic(images, targets, size, torch.Generator().manual_seed(seed))
    assert len(out_images) == len(out_targets) == 5
    for i, (image, target) in enumerate(zip(out_images, out_targets)):
        assert image.shape == (3, size, size)
        check_consistent(image, target, 15, areas(targets))
        # Four different source images (a batch of 5), its own among them, quadrants all covered.
        present = [b for b in range(5) if mask_of(image, background(b)).any()]
        assert i in present and len(present) == 4
        objects = sum(mask_of(image, colour(c)) for c in range(1, 16))
        backgrounds = sum(mask_of(image, background(b)) for b in range(5))
        assert bool(((objects + backgrounds) == 1).all())
        # Per-box fields aligned with their boxes; the base image's other fields kept.
        assert torch.equal(target["difficult"], target["labels"] % 2 == 0)
        boxes = target["boxes"].as_subclass(torch.Tensor)
        torch.testing.assert_close(target["area"], (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        assert target["image_id"] == 100 + i and target["labels"].dtype == torch.int64
        assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
        assert tuple(target["boxes"].canvas_size) == (size, size)


@pytest.mark.parametrize("seed", range(3))
def test_mosaic_resizes_sources_and_moves_boxes_with_them(seed):
    # Sources 2x taller and 3x wider than the output, corners on multiples of (2, 3), nearest
    # resize: the resized pixels and boxes stay exact (the aspect ratio is not kept).
    size = 48
    images, targets = make_batch([(2 * size, 3 * size)] * 4, seed=seed, step=(2, 3))
    out_images, out_targets = mosaic(images, targets, size, torch.Generator().manual_seed(seed), mode="nearest")
    for image, target in zip(out_images, out_targets):
        check_consistent(image, target, 12, areas(targets, 1 / 6))


def test_mosaic_any_sizes_small_batch_and_plain_tensors():
    images, targets = make_batch([(50, 70), (90, 60)], seed=1, boxes_type="tensor")
    out_images, out_targets = mosaic(images, targets, 96, torch.Generator().manual_seed(0))
    assert len(out_images) == 2 and all(im.shape == (3, 96, 96) for im in out_images)
    for t in out_targets:
        assert type(t["boxes"]) is torch.Tensor and t["boxes"].shape[1] == 4
        b = t["boxes"]
        assert bool((b >= 0).all() and (b <= 96).all() and (b[:, 2:] - b[:, :2] >= 2).all())
        assert len(t["labels"]) == len(b) == len(t["difficult"])
    # A batch of one image still yields one mosaic (its own image four times).
    one_images, one_targets = mosaic(images[:1], targets[:1], 64, torch.Generator().manual_seed(0))
    assert len(one_images) == 1 and one_images[0].shape == (3, 64, 64)


def test_mosaic_is_deterministic_given_the_generator():
    images, targets = make_batch([(64, 64)] * 6, seed=2)
    a = mosaic(images, targets, 64, torch.Generator().manual_seed(7))
    b = mosaic(images, targets, 64, torch.Generator().manual_seed(7))
    c = mosaic(images, targets, 64, torch.Generator().manual_seed(8))
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    for x, y in zip(a[1], b[1]):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])
    assert any(not torch.equal(x, y) for x, y in zip(a[0], c[0]))


# -- CutMix -------------------------------------------------------------------------------------
def test_covered_by_hand():
    box = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    # The rectangle covers the box's left half over its whole height: the box shrinks.
    visible, shrunk = covered_part(box, (0, 0, 20, 40))
    assert visible.item() == 200 and shrunk.tolist() == [[20.0, 10.0, 30.0, 30.0]]
    # The bottom strip over its whole width.
    visible, shrunk = covered_part(box, (5, 25, 35, 40))
    assert visible.item() == 300 and shrunk.tolist() == [[10.0, 10.0, 30.0, 25.0]]
    # A hole in the middle or a corner: the visible part's bounding box is the box itself.
    assert covered_part(box, (15, 15, 25, 25))[1].tolist() == box.tolist()
    visible, shrunk = covered_part(box, (0, 0, 20, 20))
    assert visible.item() == 300 and shrunk.tolist() == box.tolist()
    # Covered entirely, or not at all.
    assert covered_part(box, (0, 0, 40, 40))[0].item() == 0
    assert covered_part(box, (40, 40, 50, 50))[0].item() == 400


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_boxes_match_pixels_and_drop_rule(seed):
    images, targets = make_batch([(60, 80)] * 4, seed=seed)
    out_images, out_targets = cutmix(images, targets, torch.Generator().manual_seed(seed))
    for i, (image, target) in enumerate(zip(out_images, out_targets)):
        assert image.shape == images[i].shape
        check_consistent(image, target, 12, areas(targets))
        assert torch.equal(target["difficult"], target["labels"] % 2 == 0)
        assert target["image_id"] == 100 + i
        # Its own background is there, plus at most one other image's.
        present = [b for b in range(4) if mask_of(image, background(b)).any()]
        assert i in present and len(present) <= 2


def test_cutmix_pastes_boxes_of_another_image_and_is_deterministic():
    images, targets = make_batch([(60, 80)] * 4, seed=5)
    a = cutmix(images, targets, torch.Generator().manual_seed(3))
    b = cutmix(images, targets, torch.Generator().manual_seed(3))
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    own = [set(t["labels"].tolist()) for t in targets]
    foreign = 0
    for seed in range(10):
        for i, t in enumerate(cutmix(images, targets, torch.Generator().manual_seed(seed))[1]):
            foreign += len(set(t["labels"].tolist()) - own[i])
    assert foreign > 0  # some pasted objects are big enough to be labelled
    one = cutmix(images[:1], targets[:1], torch.Generator().manual_seed(0))
    assert torch.equal(one[0][0], images[0]) and torch.equal(one[1][0]["labels"], targets[0]["labels"])


def test_fields_missing_in_some_targets_are_filled_and_others_pass_through():
    images, targets = make_batch([(64, 64)] * 4, seed=4, boxes_type="tensor")
    del targets[1]["difficult"], targets[2]["difficult"]
    targets[0]["iscrowd"] = torch.zeros(3, dtype=torch.bool)
    targets[0]["note"] = "kept"
    for fn in (lambda: mosaic(images, targets, 64, torch.Generator().manual_seed(1)),
               lambda: cutmix(images, targets, torch.Generator().manual_seed(1))):
        _, out = fn()
        assert out[0]["note"] == "kept" and "note" not in out[1]
        assert len(out[0]["iscrowd"]) == len(out[0]["labels"]) and not out[0]["iscrowd"].any()
        assert "difficult" not in out[1] and len(out[0]["difficult"]) == len(out[0]["labels"])
        # Boxes of images without the flag come back not difficult; the others keep theirs.
        from_flagged = torch.isin(out[0]["labels"], torch.cat([targets[k]["labels"] for k in (0, 3)]))
        assert torch.equal(out[0]["difficult"][from_flagged], out[0]["labels"][from_flagged] % 2 == 0)
        assert not out[0]["difficult"][~from_flagged].any()


def test_images_without_boxes():
    images, targets = make_batch([(64, 64)] * 4, seed=6)
    for k in (1, 2):
        targets[k] = {**targets[k], "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY",
                                                                       canvas_size=(64, 64)),
                      "labels": torch.zeros(0, dtype=torch.int64), "difficult": torch.zeros(0, dtype=torch.bool),
                      "area": torch.zeros(0)}
        images[k] = background(k)[:, None, None].expand(3, 64, 64).clone()
    for fn in (lambda: mosaic(images, targets, 64, torch.Generator().manual_seed(2)),
               lambda: cutmix(images, targets, torch.Generator().manual_seed(2))):
        out_images, out_targets = fn()
        for image, target in zip(out_images, out_targets):
            check_consistent(image, target, 12, areas(targets))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    _, out = mosaic(images[:2], [empty, empty], 32, torch.Generator().manual_seed(0))
    assert out[0]["boxes"].shape == (0, 4) and out[0]["labels"].shape == (0,)
