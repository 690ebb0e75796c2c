"""Curriculum for training: simple (short) programs first, growing to the full distribution."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["CurriculumSampler"]


class CurriculumSampler(Sampler[int]):
    """Competence-based curriculum: draw from the easiest share of the data, growing to all of it.

    At the k-th sample drawn since training began, the pool is the easiest
    `c(k) = min(1, sqrt(start**2 + (1 - start**2) * k / ramp_samples))` share of the examples
    (Platanios et al., 2019), ordered by `difficulties`. Deterministic given the seed and the epoch,
    so resumed and multi-process runs see the same order.

    With `lengths` and `batch_size`, consecutive windows of `batch_size * group` draws are sorted by
    length and cut into batches (shuffled within the window): batches then hold programs of similar
    length, so far less compute goes to padding, while the curriculum still advances window by window.
    """

    def __init__(
        self,
        difficulties: Sequence[float],
        start: float = 0.2,
        ramp_samples: int = 1,
        seed: int = 0,
        lengths: Sequence[int] | None = None,
        batch_size: int | None = None,
        group: int = 16,
    ) -> None:
        if not 0 < start <= 1:
            raise ValueError(f"curriculum start share must be in (0, 1], got {start}")
        self.order = np.argsort(np.asarray(difficulties, dtype=np.float64), kind="stable")
        self.start = float(start)
        self.ramp_samples = max(1, int(ramp_samples))
        self.seed = int(seed)
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = batch_size
        self.group = max(1, int(group))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer at every epoch so each epoch's draw differs but is reproducible."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.order)
        k0 = self.epoch * n
        competence = np.minimum(1.0, np.sqrt(self.start**2 + (1 - self.start**2) * (k0 + np.arange(n)) / self.ramp_samples))
        if competence[0] >= 1.0:  # fully competent: a plain permutation, every example once per epoch
            return self.order[rng.permutation(n)]
        pool = np.maximum(1, np.ceil(competence * n).astype(np.int64))
        return self.order[(rng.random(n) * pool).astype(np.int64)]

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        indices = self._draw(rng)
        if self.lengths is None or not self.batch_size:
            return iter(indices.tolist())
        window = self.batch_size * self.group
        out: list[int] = []
        for w in range(0, len(indices), window):
            chunk = indices[w : w + window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches = [chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
            for b in rng.permutation(len(batches)):
                out.extend(batches[b].tolist())
        return iter(out)
