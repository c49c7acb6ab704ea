"""Same seed, same numbers: a classification and a detection experiment trained twice from scratch
in separate run folders give the same metrics and the same weights, bit for bit; a detector whose
trunk was pre-trained in the process equals one whose trunk came from the cache."""

import pytest
import torch

from replicate import runs
from replicate.config import compose
from replicate.data import fashion_mnist
from tests.fakes import write_idx_fashion_mnist

# What may differ between two runs of one config: where and how long they ran.
NOT_RESULTS = {"run_dir", "cached", "train_seconds", "test_seconds", "seconds_per_step", "cpu_seconds_per_step",
               "data_wait_share", "pretrain_seconds", "pretrain_cached", "post_hoc_seconds"}


def weights(result):
    state = torch.load(f"{result['run_dir']}/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    return state["state_dict"]


def assert_same(a, b):
    assert {k: v for k, v in a.items() if k not in NOT_RESULTS} == {k: v for k, v in b.items() if k not in NOT_RESULTS}
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-dataset")
    write_idx_fashion_mnist(tmp_path / "data", n_train=256, n_test=64)
    return tmp_path / "data"


def test_a_classifier_trained_twice_from_scratch_gives_the_same_numbers(data, tmp_path):
    def train(folder):
        return runs.run(compose("resnet", "reduced", [
            "experiment=resnet20_cifar10", f"paths.data_dir={data}", f"paths.run_dir={tmp_path / folder}",
            "data.train_subset=256", "data.test_subset=64", "recipe.batch_size=32", "recipe.max_steps=20",
            "recipe.val_every_steps=10", "recipe.checkpoint_every_steps=10"]))

    first, second = train("a"), train("b")
    assert not first["cached"] and not second["cached"] and first["run_dir"] != second["run_dir"]
    assert first["threads"] == 2 and first["cpu"]  # the profile's thread count, and the CPU it ran on
    assert_same(first, second)


def test_a_detector_trained_twice_gives_the_same_numbers_with_a_fresh_or_a_cached_trunk(data, tmp_path):
    overrides = ["experiment=faster_rcnn_voc07", f"paths.data_dir={data}", "recipe.training=joint",
                 "data.synth.train_images=8", "data.synth.test_images=4", "data.synth.image_size=[64,80]",
                 "data.synth.object_size=[14,40]", "model.width_mult=0.0625", "recipe.max_steps=6",
                 "recipe.checkpoint_every_steps=6", "recipe.pretrain.steps=4", "recipe.pretrain.batch_size=4"]

    def train(folder, force=False):
        return runs.run(compose("faster_rcnn", "reduced", [*overrides, f"paths.run_dir={tmp_path / folder}"]),
                              force=force)

    first, second = train("a"), train("b")
    assert first["pretrain_cached"] is False and second["pretrain_cached"] is False
    assert_same(first, second)
    # The same run again in the first folder: the trunk now comes from its cache.
    third = train("a", force=True)
    assert third["pretrain_cached"] is True
    assert_same(first, third)
