"""Runs of batches from DataLoader workers to the training process through reused
shared-memory blocks.

A tensor a worker sends normally goes through a fresh shared-memory block: created, filled,
mapped by the receiver and unmapped again, for every run of batches. With small batches that
costs more than reading them (here ~3x). :class:`Slots` lets each worker keep a few blocks
and reuse one only after the training process has dropped every tensor of the run it last
carried: a flag per block in shared memory, set by the worker when it sends the block and
cleared by a finalizer on the receiving storage, which runs when its last tensor is gone
(also after a ``pin_memory`` copy). A worker that finds no free block (the training loop
holds on to many batches) allocates a fresh one, as without slots: it never waits and never
overwrites a batch someone can still see.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

__all__ = ["Slots"]


def _release(flags: torch.Tensor, index: int) -> None:
    flags[index] = 0


class Slots:
    """``per_worker`` reusable blocks for each of ``workers`` DataLoader workers."""

    def __init__(self, workers: int, per_worker: int) -> None:
        self.per_worker = per_worker
        self.flags = torch.zeros(workers * per_worker, dtype=torch.int8).share_memory_()  # type: ignore[no-untyped-call]
        self._blocks: dict[int, torch.Tensor] = {}  # in the worker that owns them

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_blocks"] = {}
        return state

    def acquire(self, worker: int, nbytes: int) -> tuple[int, torch.Tensor] | None:
        """(slot, a shared uint8 tensor of ``nbytes``) marked in use, or None if the training
        process still holds every block of ``worker``."""
        flags = self.flags.numpy()
        for k in range(self.per_worker):
            i = worker * self.per_worker + k
            if flags[i]:
                continue
            block = self._blocks.get(i)
            if block is None or block.numel() < nbytes:
                block = torch.empty(nbytes + (nbytes >> 3), dtype=torch.uint8).share_memory_()  # type: ignore[no-untyped-call]
                self._blocks[i] = block
            flags[i] = 1
            return i, block[:nbytes]
        return None

    def release_when_dropped(self, slot: int, tensor: torch.Tensor) -> None:
        """In the training process: free ``slot`` once ``tensor``'s storage is gone."""
        weakref.finalize(tensor.untyped_storage(), _release, self.flags, slot)
