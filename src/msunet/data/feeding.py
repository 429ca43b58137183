"""Feeding `fit`: random augmented patches and fixed validation tiles as `keras.utils.PyDataset`s.

The patches, targets and augmentation are `msunet.data.pairs`'s (NumPy); this module only batches them
for Keras, with worker threads.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

import keras
import numpy as np

from msunet.config import DataConfig, ModelConfig
from msunet.data.preprocessing import DataError, Normalization
from msunet.data.samples import Sample, sample_patch
from msunet.data.targets import batch_targets


class PatchDataset(keras.utils.PyDataset):
    """Random augmented patches with a target per head, for `fit`.

    Batch `i` of epoch `e` is drawn from a generator seeded by (seed, e, i), so runs are
    reproducible and a resumed run sees the batches it would have seen. Threads (`workers`) prepare
    batches while the model trains.

    The epoch of a batch is counted per index (the k-th time index i is made it belongs to epoch
    `epoch` + k), not by `on_epoch_end`: Keras' workers fetch ahead across the epoch boundary and
    shuffle the order of indices, so an epoch counter bumped at the end of an epoch tagged a few
    batches with the next epoch's number depending on where training started; a resumed run then
    trained on other batches than the uninterrupted one (measured by benchmarks/reliability.py).
    `batch(epoch, index)` makes a batch without counting it.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        model_cfg: ModelConfig,
        data_cfg: DataConfig,
        normalization: Normalization,
        batch_size: int,
        steps: int,
        seed: int = 0,
        augment: bool = True,
        workers: int = 2,
    ):
        super().__init__(workers=max(workers, 1), use_multiprocessing=False, max_queue_size=max(2 * workers, 4))
        if not samples:
            raise DataError("No usable training images: every pair was skipped (see the problems reported above).")
        self.samples = list(samples)
        self.model_cfg, self.data_cfg = model_cfg, data_cfg
        self.normalization = normalization
        self.batch_size, self.steps, self.seed, self.augment = batch_size, steps, seed, augment
        self.epoch = 0  # the epoch of each index's next batch, before counting (a resumed run sets it)
        self._made = collections.Counter()  # batches made per index
        self._lock = threading.Lock()
        # Larger images hold more patches: sample images in proportion to their area.
        areas = np.array([s.mask.size for s in self.samples], np.float64)
        self.weights = areas / areas.sum()

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        with self._lock:
            epoch = self.epoch + self._made[index]
            self._made[index] += 1
        return self.batch(epoch, index)

    def batch(self, epoch: int, index: int):
        """Batch `index` of `epoch` (images, {head: target})."""
        rng = np.random.default_rng([self.seed, epoch, index])
        images, masks = [], []
        for _ in range(self.batch_size):
            sample = self.samples[rng.choice(len(self.samples), p=self.weights)]
            image, mask = sample_patch(sample, self.data_cfg.patch_size, self.data_cfg, rng, augment=self.augment)
            images.append(self.normalization.apply(image))
            masks.append(mask)
        return np.stack(images), batch_targets(masks, self.model_cfg, self.data_cfg.target_downsampling)

    def on_epoch_end(self) -> None:
        pass  # see the class documentation: epochs are counted per index in __getitem__


class FixedPatchDataset(keras.utils.PyDataset):
    """Validation batches: fixed tiles, no augmentation, precomputed once."""

    def __init__(self, images, masks, model_cfg: ModelConfig, data_cfg: DataConfig, normalization, batch_size: int):
        super().__init__(workers=1, use_multiprocessing=False)
        if not images:
            raise DataError("No validation images: add a val split to split.csv or set data.val_fraction > 0.")
        self.x = np.stack([normalization.apply(image) for image in images])
        self.y = batch_targets(masks, model_cfg, data_cfg.target_downsampling)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[part], {name: y[part] for name, y in self.y.items()}
