"""Batch caches a resize left behind, kept so that a later resize to the same shape writes into memory the process already holds.

Growing or shrinking a batch copies its rows into a cache of the new shape (hundreds of MB
at long contexts). A fresh buffer that size is paged in as it is written: on a 2-core KVM
guest, the copy from 4 rows of 256 positions into 8 rows of 2,048 (377 MB, embedded model)
took 865 ms the first time and 82 ms into a buffer the process held; and which memory glibc hands back
for a new buffer depends on which thread's arena freed what. A resize into a spare of the
right shape donates it, and XLA writes the copy in place (the program aliases its output to
the donated buffer), so the second time a batch grows to a shape it never pays for pages.

Spares never hold more bytes than the largest of them, so memory stays within twice the
batch's peak; past that the smallest go first, being the cheapest to page in again.
"""

from __future__ import annotations

from typing import Any

import jax

Shape = tuple[int, int]  # (batch rows, cache positions)


def nbytes(tree: Any) -> int:
    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree))


class SpareCaches:
    """At most one spare cache per shape, within the largest one's bytes (a batch's
    tokens are not kept: the host may still read them, and they are small)."""

    def __init__(self) -> None:
        self._spares: dict[Shape, Any] = {}
        self._sizes: dict[Shape, int] = {}
        self.largest = 0

    def __contains__(self, shape: Shape) -> bool:
        return shape in self._spares

    @property
    def held(self) -> int:
        """Bytes the spares hold."""
        return sum(self._sizes.values())

    def take(self, shape: Shape) -> Any | None:
        """The spare cache of `shape`, now the caller's to donate; None if there is none."""
        self._sizes.pop(shape, None)
        return self._spares.pop(shape, None)

    def keep(self, shape: Shape, cache: Any) -> None:
        """Keeps a batch cache that no step reads from now on, in place of any older spare of
        its shape, then drops the smallest spares while they hold more than `largest`."""
        size = nbytes(cache)
        self.largest = max(self.largest, size)
        self._spares[shape] = cache
        self._sizes[shape] = size
        while self.held > self.largest:
            smallest = min(self._sizes, key=self._sizes.__getitem__)
            self.take(smallest)
