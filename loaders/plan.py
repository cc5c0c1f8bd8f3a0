"""Epoch plans as pure arithmetic: the order of an epoch's samples, which rank and DataLoader
worker produces which batch, and where a resumed run (at any world size) continues.

**Order.** An epoch is a sequence of *positions* ``0 .. total-1``, each holding one sample id
(``shard start + row``). With shuffling, the shards are permuted (seeded by ``seed`` and
``epoch``), their samples laid end to end, the sequence cut into blocks of ``block`` positions
and the samples of each block permuted (seeded by ``seed``, ``epoch`` and the block number).
Samples therefore mix across every shard that falls in a block (a block of 262,144 samples
spans many shards), while a reader only needs the shards of the current block at hand: the
memory window is bounded by ``block``. Any position's sample is computed from its block alone,
so no process materialises a permutation of the whole epoch.

**Batches.** Global batch ``g`` holds positions ``start + g*b .. start + (g+1)*b - 1``, where
``start`` is where the epoch (re)started and ``b`` the batch size. Rank ``r`` of ``world``
takes global batches ``r, r + world, r + 2*world, ...`` (its step ``n`` is batch
``n*world + r``), and DataLoader worker ``w`` of ``W`` produces the rank's steps
``w, w + W, ...`` (or runs of ``group`` consecutive steps dealt out the same way): exactly
the round-robin order in which a PyTorch DataLoader takes items from its workers. Whole
batches cross the process boundary, never single samples.

**Resume.** After every rank has taken ``n`` steps, exactly positions ``start ..
start + n*world*b - 1`` have been consumed: a prefix of the epoch. A checkpoint needs only the
epoch and that position, so the run can resume with another world size, batch size or worker
count, and the remaining samples are exactly the ones not yet seen, in the same order.

**End of epoch.** ``policy`` decides what happens when the remaining samples do not fill
``world`` batches per step: ``"none"`` (the last batch is short and some ranks take one step
fewer), ``"drop"`` (every rank takes ``floor(remaining / (world*b))`` full steps; the tail is
not read this epoch) or ``"pad"`` (every rank takes ``ceil(...)`` full steps; positions past the
end wrap to the epoch's first samples and are flagged as padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np

__all__ = [
    "DEFAULT_BLOCK",
    "POLICIES",
    "BatchPlan",
    "EpochOrder",
    "LoaderState",
    "MixedOrder",
    "Policy",
    "apportion",
    "shuffle_quality",
]

Policy = Literal["none", "drop", "pad"]
POLICIES: tuple[Policy, ...] = ("none", "drop", "pad")

#: Default shuffle block: samples whose order is permuted together (MosaicML's default too).
DEFAULT_BLOCK = 1 << 18


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values) + 1, np.int64)
    np.cumsum(values, out=out[1:])
    return out


@dataclass(frozen=True, eq=False)
class EpochOrder:
    """The sample id at every position of one epoch over shards of ``sizes`` samples."""

    sizes: np.ndarray
    seed: int = 0
    epoch: int = 0
    shuffle: bool = True
    block: int = DEFAULT_BLOCK
    _starts: np.ndarray = field(init=False, repr=False)
    _perm: np.ndarray = field(init=False, repr=False)
    _perm_ends: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        sizes = np.asarray(self.sizes, np.int64)
        if sizes.ndim != 1 or (sizes < 0).any():
            raise ValueError("shard sizes must be a 1-d sequence of non-negative counts")
        if self.block < 1:
            raise ValueError(f"shuffle block must be at least 1 sample, got {self.block}")
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "_starts", _exclusive_cumsum(sizes))
        if self.shuffle:
            seq = np.random.SeedSequence([self.seed, self.epoch])
            rng = np.random.Generator(np.random.PCG64(seq))
            perm = rng.permutation(len(sizes)).astype(np.int64)
        else:
            perm = np.arange(len(sizes), dtype=np.int64)
        object.__setattr__(self, "_perm", perm)
        object.__setattr__(self, "_perm_ends", np.cumsum(sizes[perm]))

    @property
    def total(self) -> int:
        """Samples in the epoch."""
        return int(self._starts[-1])

    @property
    def shard_order(self) -> np.ndarray:
        """Shards in the order the epoch visits them."""
        return self._perm

    def _unshuffled(self, lo: int, hi: int) -> np.ndarray:
        """Sample ids at positions ``[lo, hi)`` before the in-block shuffle."""
        if hi <= lo:
            return np.empty(0, np.int64)
        first = int(np.searchsorted(self._perm_ends, lo, side="right"))
        last = int(np.searchsorted(self._perm_ends, hi - 1, side="right"))
        shards = self._perm[first : last + 1]
        sizes = self.sizes[shards]
        pos0 = self._perm_ends[first : last + 1] - sizes  # position of each shard's row 0
        pieces_lo = np.maximum(pos0, lo)
        pieces_hi = np.minimum(pos0 + sizes, hi)
        lens = pieces_hi - pieces_lo
        ids_lo = self._starts[shards] + (pieces_lo - pos0)
        base = _exclusive_cumsum(lens)[:-1]
        return np.repeat(ids_lo - base, lens) + np.arange(int(lens.sum()), dtype=np.int64)

    def block_ids(self, index: int) -> np.ndarray:
        """Sample ids at the positions of block ``index``, in epoch order."""
        return _block_ids(self, index)

    def take(self, start: int, stop: int) -> np.ndarray:
        """Sample ids at positions ``[start, stop)`` (within the epoch)."""
        if not 0 <= start <= stop <= self.total:
            raise IndexError(f"positions [{start}, {stop}) are outside 0..{self.total}")
        if not self.shuffle:
            return self._unshuffled(start, stop)
        parts = []
        for b in range(start // self.block, math.ceil(stop / self.block)):
            lo = b * self.block
            ids = self.block_ids(b)
            parts.append(ids[max(start, lo) - lo : min(stop, lo + len(ids)) - lo])
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(shard, row)`` of each sample id."""
        ids = np.asarray(ids, np.int64)
        shard = np.searchsorted(self._starts, ids, side="right") - 1
        return shard, ids - self._starts[shard]


@lru_cache(maxsize=8)
def _block_ids(order: EpochOrder, index: int) -> np.ndarray:
    lo = index * order.block
    ids = order._unshuffled(lo, min(order.total, lo + order.block))
    if order.shuffle:
        seq = np.random.SeedSequence([order.seed, order.epoch, index, 1])
        np.random.Generator(np.random.PCG64(seq)).shuffle(ids)
    ids.flags.writeable = False
    return ids


@dataclass(frozen=True)
class BatchPlan:
    """Which global batches each rank and worker produces, from position ``start`` on."""

    total: int
    batch_size: int
    world: int = 1
    start: int = 0
    policy: Policy = "none"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.world < 1:
            raise ValueError("batch_size and world must be at least 1")
        if not 0 <= self.start <= self.total:
            raise ValueError(f"start {self.start} is outside the epoch (0..{self.total})")
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r}: use one of {', '.join(POLICIES)}")

    @property
    def remaining(self) -> int:
        """Samples not yet consumed this epoch."""
        return self.total - self.start

    @property
    def num_batches(self) -> int:
        """Global batches left in the epoch (over all ranks)."""
        per_step = self.world * self.batch_size
        if self.policy == "drop":
            return (self.remaining // per_step) * self.world
        if self.policy == "pad":
            return math.ceil(self.remaining / per_step) * self.world if self.total else 0
        return math.ceil(self.remaining / self.batch_size)

    def steps(self, rank: int) -> int:
        """Steps (batches) rank ``rank`` takes."""
        self._check_rank(rank)
        return max(0, math.ceil((self.num_batches - rank) / self.world))

    def batches(self, rank: int, worker: int = 0, workers: int = 1, group: int = 1) -> np.ndarray:
        """Global batch indices worker ``worker`` of ``workers`` on rank ``rank`` produces, in
        the order the rank consumes them: runs of ``group`` consecutive steps, dealt to the
        workers in turn (the DataLoader's round robin then restores the rank's order)."""
        self._check_rank(rank)
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} is outside 0..{workers - 1}")
        if group < 1:
            raise ValueError(f"group must be positive; got {group}")
        steps = np.arange(self.steps(rank), dtype=np.int64)
        mine: np.ndarray = steps[(steps // group) % workers == worker]
        return mine * self.world + rank

    def positions(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions of global batch ``batch`` and whether each one is padding (a wrapped
        repeat of the epoch's first samples)."""
        lo = self.start + batch * self.batch_size
        hi = lo + self.batch_size
        if self.policy != "pad":
            hi = min(hi, self.total)
        pos = np.arange(lo, max(lo, hi), dtype=np.int64)
        pad = pos >= self.total
        if pad.any():
            pos = np.where(pad, (pos - self.total) % max(self.total, 1), pos)
        return pos, pad

    def consumed(self, steps: int) -> int:
        """The epoch position after every rank has taken ``steps`` steps."""
        return min(self.total, self.start + steps * self.world * self.batch_size)

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} is outside 0..{self.world - 1}")


@dataclass(frozen=True)
class LoaderState:
    """Where a run stands: epoch, consumed position, and what it was reading. The same for
    every rank (positions are global), so any rank's copy resumes the whole job."""

    epoch: int
    position: int
    seed: int
    fingerprint: str
    total: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``state_dict()``."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "total": self.total,
            "format": 1,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LoaderState:
        """Inverse of :meth:`to_dict`; raises ValueError for a malformed state."""
        try:
            return cls(
                epoch=int(doc["epoch"]),
                position=int(doc["position"]),
                seed=int(doc["seed"]),
                fingerprint=str(doc["fingerprint"]),
                total=int(doc["total"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a loader state ({type(err).__name__}: {err})") from None


def shuffle_quality(order: EpochOrder, window: int = 256, limit: int | None = None) -> float:
    """Mean number of distinct shards among ``window`` consecutive samples of the epoch (over
    the first ``limit`` positions, default all): how well the shuffle mixes shards."""
    stop = order.total if limit is None else min(order.total, limit)
    n = (stop // window) * window
    if n == 0:
        return 0.0
    shards, _ = order.locate(order.take(0, n))
    grid = np.sort(shards.reshape(-1, window), axis=1)
    distinct = 1 + (np.diff(grid, axis=1) != 0).sum(axis=1)
    return float(distinct.mean())


def apportion(size: int, weights: np.ndarray) -> np.ndarray:
    """Split ``size`` into integer counts proportional to ``weights`` (largest remainders,
    ties to the lower index): every count is within 1 of its exact share."""
    exact = size * weights / weights.sum()
    counts: np.ndarray = np.floor(exact).astype(np.int64)
    rest = size - int(counts.sum())
    if rest:
        order = np.lexsort((np.arange(len(weights)), -(exact - counts)))
        counts[order[:rest]] += 1
    return counts


@dataclass(frozen=True, eq=False)
class MixedOrder:
    """A weighted mixture of several datasets as one epoch of ``total`` positions.

    Every block of ``block`` positions takes from dataset ``d`` exactly its apportioned share
    of the block (:func:`apportion`), so any prefix of the epoch holds each dataset's weight
    to within one sample per block, whatever the resume point. Inside a block the datasets'
    slots are shuffled (seeded). Dataset ``d``'s ``j``-th slot of the epoch reads its own
    stream at index ``j``: position ``j % size_d`` of that dataset's own :class:`EpochOrder`
    for epoch ``j // size_d`` (a dataset smaller than its share is repeated, reshuffled each
    pass; a larger one is read only partly).
    """

    sizes: tuple[np.ndarray, ...]
    weights: np.ndarray
    total: int
    seed: int = 0
    epoch: int = 0
    shuffle: bool = True
    block: int = DEFAULT_BLOCK

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, np.float64)
        if len(w) != len(self.sizes) or len(w) == 0 or (w <= 0).any() or not np.isfinite(w).all():
            raise ValueError("mixture weights must be positive, one per dataset")
        if any(int(np.sum(s)) == 0 for s in self.sizes):
            raise ValueError("every dataset of a mixture needs at least one sample")
        object.__setattr__(self, "weights", w / w.sum())

    def _counts(self, k: int) -> np.ndarray:
        size = min(self.block, self.total - k * self.block)
        return apportion(size, self.weights)

    def take(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(dataset, sample id)`` at positions ``[start, stop)``."""
        if not 0 <= start <= stop <= self.total:
            raise IndexError(f"positions [{start}, {stop}) are outside 0..{self.total}")
        which, ids = [], []
        full = apportion(self.block, self.weights)
        for k in range(start // self.block, math.ceil(stop / self.block)):
            lo = k * self.block
            labels, local = _mixed_block(self, k)
            a, b = max(start, lo) - lo, min(stop, lo + len(labels)) - lo
            labels, local = labels[a:b], local[a:b]
            out = np.empty(len(labels), np.int64)
            for d in np.unique(labels):
                mask = labels == d
                stream = k * int(full[d]) + local[mask]  # index in dataset d's own stream
                out[mask] = self._stream_ids(int(d), stream)
            which.append(labels)
            ids.append(out)
        if not which:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(which), np.concatenate(ids)

    def _stream_ids(self, d: int, stream: np.ndarray) -> np.ndarray:
        size = int(np.sum(self.sizes[d]))
        out = np.empty(len(stream), np.int64)
        for e in np.unique(stream // size):
            mask = stream // size == e
            order = _dataset_order(self, d, int(e))
            pos = stream[mask] % size
            lo, hi = int(pos.min()), int(pos.max()) + 1
            out[mask] = order.take(lo, hi)[pos - lo]
        return out


@lru_cache(maxsize=16)
def _dataset_order(mixed: MixedOrder, d: int, pass_: int) -> EpochOrder:
    return EpochOrder(
        mixed.sizes[d],
        seed=mixed.seed * 1_000_003 + d,
        epoch=mixed.epoch * 1_000_003 + pass_,
        shuffle=mixed.shuffle,
        block=mixed.block,
    )


@lru_cache(maxsize=8)
def _mixed_block(mixed: MixedOrder, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Dataset label of each position of block ``k`` and its rank among that dataset's slots
    in the block."""
    counts = mixed._counts(k)
    if mixed.shuffle:
        labels = np.repeat(np.arange(len(counts)), counts)
        seq = np.random.SeedSequence([mixed.seed, mixed.epoch, k, 2])
        np.random.Generator(np.random.PCG64(seq)).shuffle(labels)
    else:  # evenly interleaved: slot j of dataset d at its (j + 0.5) / count quantile
        keys = np.concatenate([(np.arange(c) + 0.5) / c for c in counts if c])
        owners = np.concatenate([np.full(c, d) for d, c in enumerate(counts) if c])
        labels = owners[np.argsort(keys, kind="stable")]
    local = np.empty(len(labels), np.int64)
    for d in range(len(counts)):
        mask = labels == d
        local[mask] = np.arange(int(mask.sum()))
    labels.flags.writeable = False
    local.flags.writeable = False
    return labels, local
