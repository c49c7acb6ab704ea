"""`EpochSampler`: the training order of a shuffled DataLoader, resumable in the middle of an epoch.

A checkpoint written mid-epoch (every reduced checkpoint is) must resume on the very batch that
came next, in the same order, or the resumed run trains on other data than the uninterrupted one
and caches other numbers under the same hash. The order of epoch `e` is a function of (seed, e)
alone, so it can be recomputed after a restart; `resume_at` drops the batches already trained
on, and `TrainOrder` is what a data module keeps in the checkpoint to know how many.

The draws are those of `DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))`
(per epoch: the loader's 64-bit base seed, the permutation, and the permutation `RandomSampler`
draws for its remainder of zero samples once the epoch is exhausted), so a run gives the numbers
it gave with the plain shuffled loader.

Loaders without worker processes (the in-memory sets, the generated detection set on the reduced
profile) augment from streams the checkpoint keeps. Loaders with workers (ImageNet, VOC and COCO
on the full profile) draw each sample's augmentation from a generator seeded by (seed, epoch,
index) (`SeededSamples`), so it does not depend on which worker loads it, nor on when: an order
resumed mid-epoch resumes the augmentations with it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


class EpochSampler(Sampler[int]):
    """A random permutation of range(n) per epoch, epoch `e`'s fixed by (`seed`, e). Lightning calls
    `set_epoch` before each epoch; `skip_batches(k, batch_size)` makes the next iteration start at
    batch k (a resumed run)."""

    def __init__(self, n: int, seed: int, keyed: bool = False):
        self.n, self.seed, self.keyed = int(n), int(seed), bool(keyed)
        self.epoch = 0
        self._resume: tuple[int, int] | None = None
        # (epoch, generator state before that epoch's draws): one epoch's replay, not e epochs'.
        self._cached: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, batches: int, batch_size: int) -> None:
        """Start epoch `epoch`'s next iteration after its first `batches` batches."""
        self._resume = (int(epoch), int(batches) * int(batch_size))

    def order(self, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s permutation."""
        generator = torch.Generator()
        if self._cached is not None and self._cached[0] <= epoch:
            start, state = self._cached
            generator.set_state(state)
        else:
            start = 0
            generator.manual_seed(self.seed)
        for _ in range(start, epoch + 1):
            torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader's base seed
            permutation = torch.randperm(self.n, generator=generator)
            torch.randperm(self.n, generator=generator)  # RandomSampler's draw for the remainder (of 0)
        self._cached = (epoch + 1, generator.get_state())
        return permutation

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip, self._resume = self._resume[1], None
        order = self.order(self.epoch)[skip:]
        if self.keyed:  # `SeededSamples` keys: the epoch travels with the index to the worker
            order = order + self.epoch * self.n
        return iter(order.tolist())


class SeededSamples(Dataset):
    """`dataset` read with `EpochSampler(keyed=True)` keys (epoch * n + index): sample `index` of
    epoch `epoch` is drawn with torch's generator seeded from (seed, epoch, index), in a forked
    random state that leaves the process's own stream untouched."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int):
        epoch, index = divmod(int(key), len(self))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            return self.dataset[index]


class TrainOrder:
    """A data module's training order and how far into its epoch training has got: what a
    checkpoint keeps (`state_dict`) so that a resumed run starts on the next batch.

    The data module creates the sampler with `sampler(n, batch_size)` and calls `trained()` once
    per training batch consumed (in `on_after_batch_transfer`, i.e. when the training loop takes
    it, not when the loader prefetches it)."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.epoch, self.batches = 0, 0
        self._sampler: EpochSampler | None = None
        self._restored = False

    def sampler(self, n: int, batch_size: int, keyed: bool = False) -> EpochSampler:
        """A new training order (a new fit starts at epoch 0), resumed where the checkpoint just
        loaded says, if one was. `keyed`: for a dataset wrapped in `SeededSamples`."""
        self._sampler = EpochSampler(n, self.seed, keyed)
        if self._restored:
            self._sampler.resume_at(self.epoch, self.batches, batch_size)
            self._restored = False
        else:
            self.epoch, self.batches = 0, 0
        return self._sampler

    def trained(self) -> None:
        epoch = self._sampler.epoch if self._sampler is not None else 0
        if epoch != self.epoch:
            self.epoch, self.batches = epoch, 0
        self.batches += 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        """Called by Lightning before the fit builds its training loader (`sampler`)."""
        self.epoch, self.batches = int(state["epoch"]), int(state["batches"])
        self._restored = True


class KeepsTrainOrder:
    """A data module's side of `TrainOrder` (mixed in before `LightningDataModule`, with
    `self.order` set in `__init__`): counts the training batches the loop takes, and keeps the
    order in each checkpoint."""

    order: TrainOrder

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:  # type: ignore[attr-defined]
            self.order.trained()
        return batch

    def state_dict(self) -> dict:
        return {"order": self.order.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state["order"])
