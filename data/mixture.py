"""Weighted mixtures of sources as one random-access source.

The index space is cut into blocks of `BLOCK` slots; in every block component k owns
round(w_k * BLOCK) slots (largest remainder), so any window of a block has the configured
proportions up to one slot. Slot r of component k in block b reads its record (b * n_k + r) mod len_k:
small components repeat, and the mixture's length covers the largest component once.
"""

import math

import numpy as np

BLOCK = 1000


def slot_counts(weights: list[float], block: int = BLOCK) -> list[int]:
  """Slots per block for each weight (largest-remainder rounding, every weight >= 1 slot)."""
  total = sum(weights)
  exact = [w / total * block for w in weights]
  counts = [max(1, math.floor(x)) for x in exact]
  order = sorted(range(len(weights)), key=lambda k: exact[k] - math.floor(exact[k]), reverse=True)
  for k in order[:max(0, block - sum(counts))]:
    counts[k] += 1
  return counts


class MixtureSource:
  """Components drawn in proportion to their weights, interleaved within every block."""

  def __init__(self, components: list, weights: list[float]):
    if len(components) != len(weights) or any(w <= 0 for w in weights):
      raise ValueError('a mixture needs one positive weight per source')
    self.components, self.weights = components, weights
    self.counts = slot_counts(weights)
    self.block = sum(self.counts)
    # Interleave components inside a block (evenly spaced), not one run after another.
    ranks = [(j / n, k) for k, n in enumerate(self.counts) for j in range(n)]
    self._slot_owner = np.array([k for _, k in sorted(ranks)], np.int32)
    self._slot_rank = np.zeros(self.block, np.int64)
    seen = [0] * len(components)
    for slot, k in enumerate(self._slot_owner):
      self._slot_rank[slot], seen[k] = seen[k], seen[k] + 1
    blocks = max(math.ceil(len(c) / n) for c, n in zip(components, self.counts))
    self._len = blocks * self.block
    self.name = '+'.join(getattr(c, 'name', 'source') for c in components)
    self.problems = [p for c in components for p in getattr(c, 'problems', [])]

  def __len__(self) -> int:
    return self._len

  def locate(self, i: int) -> tuple[int, int]:
    """(component, index within it) of mixture index i."""
    block, slot = divmod(int(i), self.block)
    k = int(self._slot_owner[slot])
    return k, (block * self.counts[k] + int(self._slot_rank[slot])) % len(self.components[k])

  def text(self, i: int) -> list[str]:
    """The caption(s) of mixture record i."""
    k, j = self.locate(i)
    return self.components[k].text(j)

  def __getitem__(self, i: int) -> dict:
    k, j = self.locate(i)
    return {**self.components[k][j], 'component': k}
