"""``StreamingDataset``: a PyTorch ``IterableDataset`` of whole batches from a Shardyard dataset
(table or packed tokens, local or ``s3://``), partitioned and resumable per :mod:`loaders.plan`.

Each DataLoader worker produces whole batches (use ``DataLoader(ds, batch_size=None)`` or
:class:`StatefulLoader`), reading rows from shards decoded once into the node cache
(:mod:`loaders.cache`) and memory-mapped, so a shuffled batch costs a few page-cache reads
instead of decoding the shards it touches.

Batches: for a table dataset, ``{column: numpy array}`` (strings and nested values as Python
lists); for a packed token dataset (``datastore.packed``), ``input_ids`` (int64, ``(b,
seq_len)``), ``labels`` (the ids, ``-100`` on padding), ``position_ids`` (restarting at every
document, the usual way to mask attention across packed documents), ``cu_seqlens`` (int32,
flash-attention's varlen form over the flattened batch: every document, and each row's padding
as one more segment, ending at ``b * seq_len``) and ``seq_lens`` (non-pad tokens per row).
``outputs=`` picks a subset of these (fewer bytes per batch). Every value is one array; a
:class:`StatefulLoader` worker sends several batches at a time as one shared-memory block,
reused once the training loop has dropped all of them: clone a tensor you keep for long (it
keeps its whole block, and the worker then allocates fresh ones).
``labels`` are not masked at document starts: a model that shifts
labels internally (Hugging Face causal LMs) learns to predict a document's first token from
the end of the previous one unless attention is limited by ``position_ids``/``cu_seqlens``.
A numeric column with nulls in a batch comes back as a Python list (with ``None``), not an
array.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from datastore import ArrayDataset, StorageConfig, TableDataset, open_dataset
from datastore.errors import InvalidInput
from datastore.packed import PackedTokens
from loaders.cache import ShardCache
from loaders.plan import DEFAULT_BLOCK, BatchPlan, EpochOrder, LoaderState, MixedOrder, Policy
from loaders.sources import TableSource, TokenRows, TokenSource, assemble, merge_tables
from loaders.transfer import Slots

__all__ = ["StatefulLoader", "StreamingDataset"]

try:
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info
except ImportError as err:  # pragma: no cover - torch is the loaders' reason to exist
    raise ImportError("loaders needs PyTorch: pip install 'shardyard[torch]'") from err


class StreamingDataset(IterableDataset[dict[str, Any]]):
    """Whole batches of ``batch_size`` samples from dataset ``source`` (a URI; latest version
    unless ``version``), seeded-shuffled across shards within blocks of ``block`` samples,
    partitioned over ``world`` ranks (default: from ``torch.distributed``) and the DataLoader's
    workers, every sample exactly once per epoch (see :mod:`loaders.plan` for ``policy``).

    ``len(ds)`` is the number of samples and ``ds[i]`` sample ``i`` (unshuffled order).
    ``state_dict()`` / ``load_state_dict()`` resume exactly, also at another world size,
    batch size or worker count; with DataLoader workers, take the state from
    :class:`StatefulLoader`, which counts the batches the training loop received.
    """

    #: batches this worker produced in this iteration, and those to skip (a worker's resume)
    _produced: int = 0
    _skip: int = 0

    def __init__(
        self,
        source: str | Sequence[str],
        *,
        batch_size: int,
        columns: Sequence[str] | None = None,
        outputs: Sequence[str] | None = None,
        version: int | None = None,
        weights: Sequence[float] | None = None,
        samples: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        block: int = DEFAULT_BLOCK,
        policy: Policy = "none",
        rank: int | None = None,
        world: int | None = None,
        cache_dir: str | None = None,
        cache_limit: int | None = None,
        prefetch: int = 4,
        config: StorageConfig | None = None,
    ) -> None:
        """``source`` may be a list of URIs: a mixture, ``weights`` giving each one's share of
        every block (default: proportional to size) and ``samples`` the epoch length (default:
        their total); ``version`` then applies to none of them (latest versions).
        ``cache_limit`` bounds the node cache in bytes (evicting by the epoch's read order).
        ``outputs`` names the arrays of a token batch (default: all of ``TOKEN_OUTPUTS``).
        ``prefetch`` shards are fetched into the cache ahead of use, in parallel, in the
        epoch's order (0: fetch on first use only)."""
        uris = [source] if isinstance(source, str) else list(source)
        if not uris:
            raise InvalidInput("StreamingDataset needs at least one dataset URI")
        self.sources = [
            _open_source(u, version if len(uris) == 1 else None, columns, outputs, config)
            for u in uris
        ]
        self.source = self.sources[0]
        _check_compatible(self.sources)
        sizes = [int(s.sizes.sum()) for s in self.sources]
        if weights is not None and len(weights) != len(uris):
            raise InvalidInput(f"{len(weights)} weights for {len(uris)} datasets")
        self.weights = np.asarray(weights if weights is not None else sizes, np.float64)
        if len(uris) > 1 and ((self.weights <= 0).any() or min(sizes) == 0):
            raise InvalidInput("every dataset of a mixture needs samples and a positive weight")
        if len(uris) == 1 and (samples is not None or weights is not None):
            raise InvalidInput("samples= and weights= apply to a mixture of several datasets")
        if block < 1 or batch_size < 1:
            raise InvalidInput(f"batch_size ({batch_size}) and block ({block}) must be positive")
        self.samples = int(samples) if samples is not None else sum(sizes)
        self.uri, self.version = self.source.uri, self.source.version
        self.batch_size = batch_size
        self.shuffle, self.seed, self.block, self.policy = shuffle, seed, block, policy
        if rank is None or world is None:
            rank, world = _distributed()
        self.rank, self.world = rank, world
        self._names = self.source.cache_names() if len(self.sources) == 1 else {}
        self._cursor = 0  # position of the batch being read (for eviction order)
        self.cache = ShardCache(cache_dir, limit_bytes=cache_limit, next_use=self._next_use)
        if cache_limit is not None and len(self.sources) == 1:
            self._check_window(cache_limit)
        if prefetch < 0:
            raise InvalidInput(f"prefetch must be 0 or more shards; got {prefetch}")
        self.prefetch = prefetch
        self._ahead: _Prefetcher | None = None
        self.epoch = 0
        self._start = 0
        self._steps = 0  # batches this process consumed (iterating without workers)
        if not 0 <= rank < world:
            raise InvalidInput(f"rank {rank} is outside world size {world}")
        try:
            BatchPlan(self.total, batch_size, world, policy=policy)
        except ValueError as err:
            raise InvalidInput(f"StreamingDataset({self.uri}): {err}") from None

    def _check_window(self, limit: int) -> None:
        """Warn when one shuffle block's shards cannot all stay cached: every batch draws from
        all of them, so no eviction order can keep the cache from thrashing."""
        sizes = self.source.sizes
        cached = self.source.cached_sizes()
        if not sizes.sum():
            return
        per_sample = float(cached.sum()) / float(sizes.sum())
        edge = 2 * int(cached.max())  # a block starts and ends inside shards
        window = min(int(cached.sum()), int(per_sample * self.block) + edge)
        if window > limit:
            fits = max(1, int((limit - edge) / per_sample)) if limit > edge else 0
            hint = f"block={fits:,} or less" if fits else "fewer, smaller shards"
            warnings.warn(
                f"cache_limit={limit:,} bytes is below the ~{window:,} bytes of shards one "
                f"shuffle block of {self.uri} reads (block={self.block:,} samples): every batch "
                f"draws from all of them, so the cache will refetch shards within the block; "
                f"use {hint}, or raise cache_limit",
                stacklevel=3,
            )

    # -- sizes and random access -----------------------------------------------------------
    @property
    def total(self) -> int:
        """Samples per epoch."""
        if len(self.sources) > 1:
            return self.samples
        return int(self.source.sizes.sum())

    @property
    def fingerprint(self) -> str:
        """Identifies what is read: a state from another dataset or version is refused."""
        h = hashlib.sha256()
        for src in self.sources:
            h.update(f"{src.uri}@{src.version}".encode())
            h.update(src.sizes.tobytes())
        if len(self.sources) > 1:
            h.update(self.weights.tobytes())
            h.update(str(self.samples).encode())
        # the order depends on these too: a position means nothing in another order
        h.update(f"block={self.block},shuffle={self.shuffle}".encode())
        names = "+".join(f"{s.uri}@{s.version}" for s in self.sources)
        return f"{names}:{h.hexdigest()[:16]}"

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> dict[str, Any]:
        if len(self.sources) > 1:
            raise InvalidInput("a mixture has no random access; index one of ds.sources")
        if not -self.total <= index < self.total:
            raise IndexError(f"sample {index} is out of range for {self.total} samples")
        index %= self.total
        order = EpochOrder(self.source.sizes, shuffle=False)
        shard, row = order.locate(np.array([index]))
        return self.source.sample(int(shard[0]), int(row[0]), self.cache)

    # -- epochs, plans and state -------------------------------------------------------------
    def order(self) -> EpochOrder:
        """This epoch's sample order (of the first dataset, for a mixture see ``mixture``)."""
        memo = getattr(self, "_order_memo", None)
        if memo is None or memo.epoch != self.epoch:
            memo = EpochOrder(self.source.sizes, self.seed, self.epoch, self.shuffle, self.block)
            self._order_memo = memo
        return memo

    def mixture(self) -> MixedOrder:
        """This epoch's mixture order."""
        memo = getattr(self, "_mixture_memo", None)
        if memo is None or memo.epoch != self.epoch:
            memo = MixedOrder(
                tuple(s.sizes for s in self.sources),
                self.weights,
                self.samples,
                self.seed,
                self.epoch,
                self.shuffle,
                self.block,
            )
            self._mixture_memo = memo
        return memo

    def plan(self) -> BatchPlan:
        """This epoch's batches from the current position on."""
        return BatchPlan(self.total, self.batch_size, self.world, self._start, self.policy)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning (the current epoch: no change, so the usual
        ``for epoch in range(start, n): ds.set_epoch(epoch)`` keeps a mid-epoch resume)."""
        if epoch != self.epoch:
            self.epoch, self._start, self._steps = epoch, 0, 0

    def state_dict(self, steps: int | None = None) -> dict[str, Any]:
        """Where the run stands after ``steps`` batches per rank in this epoch (default: what
        this process consumed).

        Called inside a DataLoader worker (as torchdata's ``StatefulDataLoader`` does), the
        state is that worker's: the iteration's start and how many batches the worker has
        produced; it resumes with the same worker count (torchdata's rule; a
        :class:`StatefulLoader` state resumes at any count)."""
        info = get_worker_info()
        if info is not None and steps is None:
            base = LoaderState(
                self.epoch, self._start, self.seed, self.fingerprint, self.total
            ).to_dict()
            base["worker"] = {
                "id": info.id,
                "workers": info.num_workers,
                "group": 1,
                "produced": self._produced,
            }
            return base
        taken = self._steps if steps is None else steps
        position = self.plan().consumed(taken)
        epoch = self.epoch
        # every rank rolls over together: at rank 0's step count (the largest)
        if position >= self.total or taken >= self.plan().steps(0) > 0:
            epoch, position = epoch + 1, 0
        return LoaderState(epoch, position, self.seed, self.fingerprint, self.total).to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (any world size, batch size or worker count)."""
        try:
            st = LoaderState.from_dict(state)
        except ValueError as err:
            raise InvalidInput(f"cannot resume {self.uri}: {err}") from None
        if st.fingerprint != self.fingerprint or st.seed != self.seed:
            raise InvalidInput(
                f"the state is from {st.fingerprint} (seed {st.seed}), not {self.fingerprint} "
                f"(seed {self.seed}); resume with the dataset version and seed it was saved with"
            )
        self.epoch, self._start, self._steps = st.epoch, st.position, 0
        self._skip = self._produced = 0
        worker = state.get("worker")
        if worker is not None:
            info = get_worker_info()
            here = (info.id, info.num_workers) if info is not None else None
            if here != (worker.get("id"), worker.get("workers")) or worker.get("group") != 1:
                raise InvalidInput(
                    f"cannot resume {self.uri}: the state is DataLoader worker "
                    f"{worker.get('id')} of {worker.get('workers')}'s (torchdata's per-worker "
                    f"form), which resumes only in that worker at that worker count; "
                    "use loaders.StatefulLoader to resume at another count"
                )
            self._skip = self._produced = int(worker.get("produced", 0))

    # -- iteration -------------------------------------------------------------------------
    def batches(self, worker: int = 0, workers: int = 1) -> Iterator[dict[str, Any]]:
        """This rank's batches that DataLoader worker ``worker`` of ``workers`` produces."""
        for group in self.groups(worker, workers, 1, tensors=False):
            yield from group

    def groups(
        self, worker: int, workers: int, group: int, tensors: bool
    ) -> Iterator[list[dict[str, Any]]]:
        """This worker's batches in runs of ``group`` consecutive steps (see
        ``BatchPlan.batches``), each run's arrays in one buffer (a torch tensor if ``tensors``:
        one shared-memory block when a DataLoader worker sends the run)."""
        for _, run in self._runs(worker, workers, group, tensors, None):
            yield run

    def _runs(
        self, worker: int, workers: int, group: int, tensors: bool, slots: Slots | None
    ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """``groups``, each run with the slot of ``slots`` its buffer came from (-1: none)."""
        plan = self.plan()
        order = self._epoch_order()
        steps = plan.batches(self.rank, worker, workers, group).tolist()
        self._produced, skip = self._skip, self._skip
        self._skip = 0
        taken = [-1]

        def allocate(nbytes: int) -> Any:
            got = slots.acquire(worker, nbytes) if slots is not None else None
            if got is None:
                return None
            taken[0] = got[0]
            return got[1]

        for i in range(skip, len(steps), group):
            taken[0] = -1
            run = self._read_batches(plan, order, steps[i : i + group], tensors, allocate)
            self._produced += len(run)
            yield taken[0], run

    def batch_at(self, step: int) -> dict[str, Any]:
        """This rank's batch number ``step`` of the current epoch (counted from the current
        position), computed on its own: for readers that ask by index, such as DALI's
        parallel workers. Raises StopIteration past the rank's last step."""
        plan = self.plan()
        if not 0 <= step < plan.steps(self.rank):
            raise StopIteration
        g = step * self.world + self.rank
        return self._read_batches(plan, self._epoch_order(), [g], tensors=False)[0]

    def _epoch_order(self) -> EpochOrder | MixedOrder:
        return self.mixture() if len(self.sources) > 1 else self.order()

    def _next_use(self, name: str) -> float:
        """How many shuffle blocks ahead of the current read the shard behind cache file
        ``name`` is needed this epoch (infinite: not again, or not ours)."""
        shard = self._names.get(name)
        if shard is None:
            return math.inf
        order = self.order()
        memo = getattr(self, "_rank_memo", None)
        if memo is None or memo[0] is not order:
            memo = (order, np.argsort(order.shard_order))
            self._rank_memo = memo
        end = int(order._perm_ends[memo[1][shard]])
        first, last = (end - int(self.source.sizes[shard])) // self.block, (end - 1) // self.block
        current = self._cursor // self.block
        if last < current:
            return math.inf
        return float(max(0, first - current))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ahead"] = None  # threads stay in their process
        return state

    def _prefetch(self) -> None:
        """Keep up to ``prefetch`` fetches running of the shards this and the next shuffle
        block read, or the next ``2 * prefetch`` shards, whichever reaches further (in the
        epoch's order), while the cache has room."""
        if not self.prefetch or len(self.sources) > 1:
            return
        order = self.order()
        if self._ahead is None or self._ahead.order is not order:
            if self._ahead is not None:
                self._ahead.close()
            self._ahead = _Prefetcher(order, self.prefetch)
        ahead = self._ahead
        if not ahead.room():
            return
        b = self._cursor // self.block
        lo, hi = b * self.block, min(order.total, (b + 2) * self.block)
        ends = order._perm_ends
        first = int(np.searchsorted(ends, lo, side="right"))
        last = int(np.searchsorted(ends, hi - 1, side="right"))
        last = max(last, int(np.searchsorted(ends, self._cursor, side="right")) + 2 * self.prefetch)
        limit = self.cache.limit_bytes
        start = max(first, ahead.upto)  # shards are submitted in order: skip those done
        for k in range(start, min(last + 1, len(order.shard_order))):
            if not ahead.room():
                break
            if limit is not None and not self._room_for_one_more(limit):
                break  # a prefetch now would evict a shard needed sooner
            shard = int(order.shard_order[k])
            if shard not in ahead.submitted:
                ahead.submit(shard, self.source.fetch, self.cache)
            ahead.upto = k + 1

    def _room_for_one_more(self, limit: int) -> bool:
        """Whether the cache can take the running prefetches and one more shard (each
        counted as large as the largest cached file) without going over ``limit``."""
        sizes = [size for _, size, _ in self.cache._files()]
        assert self._ahead is not None
        return sum(sizes) + (len(self._ahead.running) + 1) * max(sizes, default=0) <= limit

    def _read_batches(
        self,
        plan: BatchPlan,
        order: EpochOrder | MixedOrder,
        steps: list[int],
        tensors: bool,
        allocate: Any = None,
    ) -> list[dict[str, Any]]:
        pending, pads = [], []
        for g in steps:
            pos, pad = plan.positions(g)
            self._cursor = int(pos[0])
            self._prefetch()
            pending.append(self._prepare(order, pos))
            pads.append(pad)
        batches = assemble(pending, self.source.outputs, tensors, allocate)
        if self.policy == "pad":
            for batch, pad in zip(batches, pads, strict=True):
                batch["is_padding"] = pad  # repeats of the epoch's first samples
        return batches

    def _prepare(
        self, order: EpochOrder | MixedOrder, pos: np.ndarray
    ) -> TokenRows | dict[str, Any]:
        if int(pos[-1] - pos[0]) == len(pos) - 1:  # contiguous (always, unless padding)
            spans = [(int(pos[0]), int(pos[-1]) + 1)]
        else:
            spans = [(int(x), int(x) + 1) for x in pos]
        if isinstance(order, EpochOrder):
            ids = np.concatenate([order.take(a, b) for a, b in spans])
            shards, rows = order.locate(ids)
            return self.source.prepare(shards, rows, self.cache)
        taken = [order.take(a, b) for a, b in spans]
        which = np.concatenate([t[0] for t in taken])
        ids = np.concatenate([t[1] for t in taken])
        tokens: list[tuple[np.ndarray, TokenRows]] = []
        tables: list[tuple[np.ndarray, dict[str, Any]]] = []
        for d in np.unique(which).tolist():
            mine = np.flatnonzero(which == d)
            src = self.sources[d]
            shards, rows = EpochOrder(src.sizes, shuffle=False).locate(ids[mine])
            part = src.prepare(shards, rows, self.cache)
            if isinstance(part, TokenRows):
                tokens.append((mine, part))
            else:
                tables.append((mine, part))
        return TokenRows.merge(tokens, len(ids)) if tokens else merge_tables(tables, len(ids))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        if info is not None:
            # eager, not in a generator body: torchdata asks for a worker's state before
            # its first batch
            self._produced = self._skip
            return self._worker_batches(info.id, info.num_workers)
        return self._main_batches()

    def _worker_batches(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        for _, run in self._runs(worker, workers, 1, True, None):
            yield from run

    def _main_batches(self) -> Iterator[dict[str, Any]]:
        self._start, self._steps = self.plan().consumed(self._steps), 0  # a re-iteration goes on
        for batch in self.batches():
            self._steps += 1
            yield batch
        self.set_epoch(self.epoch + 1)

    def _close_prefetch(self) -> None:
        """Wait for running prefetches and stop the threads (before forking workers: a fork
        must not copy a fetch in progress, or its cache lock)."""
        if self._ahead is not None:
            self._ahead.close(wait=True)
            self._ahead = None


class _Runs(IterableDataset[tuple[int, list[dict[str, Any]]]]):
    """What a :class:`StatefulLoader`'s workers iterate: runs of ``transfer`` batches of
    ``dataset``, each with the slot of ``slots`` its buffer came from (-1: a fresh one)."""

    def __init__(self, dataset: StreamingDataset, transfer: int, slots: Slots) -> None:
        self.dataset = dataset
        self.transfer = transfer
        self.slots = slots

    def __iter__(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        info = get_worker_info()
        if info is None:
            raise InvalidInput("runs of batches are for DataLoader workers")
        return self.dataset._runs(info.id, info.num_workers, self.transfer, True, self.slots)


class _Prefetcher:
    """Background fetches of one epoch's shards into the node cache. A failed fetch is left
    to the reader, which fetches the shard again and reports the error where it is needed."""

    def __init__(self, order: EpochOrder, width: int) -> None:
        self.order = order
        self.width = width
        self.pool = ThreadPoolExecutor(width, thread_name_prefix="shardyard-prefetch")
        self.submitted: set[int] = set()
        self.upto = 0  # shard_order[:upto] all submitted
        self.running: list[Future[Any]] = []

    def room(self) -> bool:
        self.running = [f for f in self.running if not f.done()]
        return len(self.running) < self.width

    def submit(self, shard: int, fetch: Any, cache: ShardCache) -> None:
        self.submitted.add(shard)
        self.running.append(self.pool.submit(fetch, shard, cache))

    def close(self, wait: bool = False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=not wait)


class StatefulLoader:
    """A DataLoader over a :class:`StreamingDataset` that knows how many batches the training
    loop received, hence where to resume: ``state_dict()`` / ``load_state_dict()``."""

    def __init__(self, dataset: StreamingDataset, *, transfer: int = 4, **kwargs: Any) -> None:
        """``kwargs`` go to the DataLoader; with workers, each sends ``transfer`` batches at a
        time."""
        if transfer < 1:
            raise InvalidInput(f"transfer must be a positive number of batches; got {transfer}")
        self.transfer = transfer
        if kwargs.get("batch_size") is not None:
            raise InvalidInput("StatefulLoader batches in the dataset: drop batch_size")
        if kwargs.get("in_order") is False:
            raise InvalidInput("StatefulLoader needs in_order=True: positions follow the order")
        if kwargs.get("collate_fn") is not None:
            raise InvalidInput(
                "StatefulLoader batches in the dataset: drop collate_fn and apply it to each "
                "batch in the training loop"
            )
        self.dataset = dataset
        self.kwargs = {**kwargs, "batch_size": None}
        self.steps = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ds = self.dataset
        if self.steps:  # a new iteration after a partial one continues after what was seen
            ds.load_state_dict(ds.state_dict(self.steps))
        self.steps = 0
        epoch = ds.epoch
        if self.kwargs.get("num_workers", 0):
            # Workers send runs of batches, each run in one reused shared-memory block (the
            # per-block cost of a hand-off, not the copy, dominates with small batches).
            ds._close_prefetch()
            workers = int(self.kwargs["num_workers"])
            depth = int(self.kwargs.get("prefetch_factor") or 2)
            slots = Slots(workers, depth + 2)
            batch: dict[str, Any] | None = None
            for slot, run in DataLoader(_Runs(ds, self.transfer, slots), **self.kwargs):
                if slot >= 0:
                    slots.release_when_dropped(slot, next(iter(run[0].values())))
                for batch in run:
                    self.steps += 1
                    yield batch
                # the block is free once the training loop drops the run's batches
                run = batch = None
        else:
            for batch in DataLoader(ds, **self.kwargs):
                self.steps += 1
                yield batch
        if ds.epoch == epoch:  # without workers the dataset has already moved on itself
            ds.set_epoch(epoch + 1)
        self.steps = 0

    def __len__(self) -> int:
        return self.dataset.plan().steps(self.dataset.rank)

    def state_dict(self) -> dict[str, Any]:
        """Where the run stands: resumable at any world size or worker count."""
        return self.dataset.state_dict(self.steps)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``."""
        self.dataset.load_state_dict(state)
        self.steps = 0


def _open_source(
    uri: str,
    version: int | None,
    columns: Sequence[str] | None,
    outputs: Sequence[str] | None,
    config: StorageConfig | None,
) -> TableSource | TokenSource:
    ds = open_dataset(uri, version, config=config)
    if isinstance(ds, TableDataset):
        if outputs is not None:
            raise InvalidInput(f"{ds.uri} holds a table; outputs= applies to token rows")
        return TableSource(ds, columns)
    assert isinstance(ds, ArrayDataset)
    if columns is not None:
        raise InvalidInput(f"{ds.uri} holds token rows; columns= applies to tables")
    return TokenSource(PackedTokens(ds), outputs)


def _check_compatible(sources: Sequence[TableSource | TokenSource]) -> None:
    """Mixed datasets must give batches of one shape: the same columns and types, or token
    rows of one length."""
    first = sources[0]
    for other in sources[1:]:
        if type(other) is not type(first):
            raise InvalidInput(
                f"cannot mix {first.uri} and {other.uri}: one holds tables, the other tokens"
            )
        if isinstance(first, TableSource) and isinstance(other, TableSource):
            a, b = first.schema, other.schema
            if not a.equals(b):
                raise InvalidInput(
                    f"cannot mix {first.uri} and {other.uri}: their columns differ "
                    f"({a.to_string(show_schema_metadata=False)!r} vs "
                    f"{b.to_string(show_schema_metadata=False)!r}); choose common columns="
                )
        elif (
            isinstance(first, TokenSource)
            and isinstance(other, TokenSource)
            and first.packed.seq_len != other.packed.seq_len
        ):
            raise InvalidInput(
                f"cannot mix {first.uri} and {other.uri}: rows of {first.packed.seq_len} "
                f"and {other.packed.seq_len} tokens"
            )


def _distributed() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return 0, 1
