"""Shard readers behind :class:`loaders.StreamingDataset`: the rows of a table dataset or of a
packed token dataset, decoded once per shard into the node cache (:mod:`loaders.cache`) and
memory-mapped, and the assembly of batches from them.

A batch is built in two steps so that several batches can share one buffer: ``prepare`` finds
the rows (and, for tokens, each row's document lengths) and says which arrays the batch needs;
``fill`` writes them into views of a buffer the caller lays out (:class:`Arena`). A DataLoader
worker hands a group of batches to the training process as one shared-memory block instead of
one block per array, which is what costs most per batch across the process boundary.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from datastore import TableDataset
from datastore.errors import InvalidInput
from datastore.packed import PackedTokens
from loaders.cache import ShardCache

#: Arrays a token batch can hold (all by default); see :class:`loaders.StreamingDataset`.
TOKEN_OUTPUTS = ("input_ids", "labels", "position_ids", "cu_seqlens", "seq_lens")

#: Shards a reader keeps open (memory-mapped) at once.
_OPEN_SHARDS = 64

#: Label of tokens that are not predicted (PyTorch's ``cross_entropy`` ignore index).
IGNORE = -100


def _retry_evicted(open_: Any) -> Any:
    """``open_()``, once more if another process evicted the file between its cache lookup
    and the open (the second lookup rebuilds it)."""
    try:
        return open_()
    except FileNotFoundError:
        return open_()


def _remember(opened: OrderedDict[int, Any], index: int, value: Any) -> None:
    opened[index] = value
    opened.move_to_end(index)
    while len(opened) > _OPEN_SHARDS:  # also lets evicted files' disk space go
        opened.popitem(last=False)


class _Unpicklable:
    """Sources drop their open memory maps when shipped to another process."""

    _open: OrderedDict[int, Any]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state


# -- buffers ---------------------------------------------------------------------------------
Layout = list[tuple[str, tuple[int, ...], np.dtype]]


class Arena:
    """One buffer holding the arrays of several batches (``layouts``, one per batch), as a
    torch tensor when ``tensors`` (views then share its storage: one shared-memory block per
    group when a DataLoader worker sends it) or as a numpy array."""

    _ALIGN = 64

    def __init__(
        self,
        layouts: Sequence[Layout],
        tensors: bool,
        allocate: Callable[[int], Any] | None = None,
    ) -> None:
        """``allocate(nbytes)`` may supply the buffer (a uint8 tensor, or None to decline)."""
        self.places: list[list[tuple[str, int, tuple[int, ...], np.dtype]]] = []
        offset = 0
        for layout in layouts:
            places = []
            for name, shape, dtype in layout:
                places.append((name, offset, shape, dtype))
                size = math.prod(shape) * dtype.itemsize
                offset += -(-size // self._ALIGN) * self._ALIGN
            self.places.append(places)
        self.tensors = tensors
        supplied = allocate(offset) if tensors and allocate is not None and offset else None
        if supplied is not None:
            self.buffer: Any = supplied
            raw = supplied.numpy()
        elif tensors:
            import torch

            self.buffer = torch.empty(offset, dtype=torch.uint8)
            raw = self.buffer.numpy()
        else:
            raw = self.buffer = np.empty(offset, np.uint8)
        self._raw: np.ndarray = raw

    def arrays(self, batch: int) -> dict[str, np.ndarray]:
        """Numpy views of batch ``batch``'s arrays (to fill)."""
        return {
            name: self._raw[off : off + math.prod(shape) * dtype.itemsize]
            .view(dtype)
            .reshape(shape)
            for name, off, shape, dtype in self.places[batch]
        }

    def outputs(self, batch: int) -> dict[str, Any]:
        """Batch ``batch``'s arrays as handed out: tensors sharing the buffer, or numpy."""
        if not self.tensors:
            return self.arrays(batch)
        import torch

        out = {}
        for name, off, shape, dtype in self.places[batch]:
            nbytes = math.prod(shape) * dtype.itemsize
            kind = torch.from_numpy(np.empty(0, dtype)).dtype
            out[name] = self.buffer[off : off + nbytes].view(kind).view(shape)
        return out


# -- pending batches -------------------------------------------------------------------------
@dataclass
class TokenRows:
    """The rows of a token batch before assembly: where each row's ids lie, and its
    documents' lengths."""

    seq_len: int
    n: int
    #: (position(s) in the batch, a shard's ``(rows, seq_len)`` ids, row(s) in that shard)
    gathers: list[tuple[Any, np.ndarray, Any]] = field(default_factory=list)
    #: document lengths of each batch row, in row order
    pieces: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def merge(cls, parts: Sequence[tuple[np.ndarray, TokenRows]], n: int) -> TokenRows:
        """One batch of ``n`` rows from parts, each placed at its batch positions."""
        seq_len = parts[0][1].seq_len
        pieces: list[np.ndarray] = [np.empty(0, np.int64)] * n
        gathers = []
        for where, part in parts:
            gathers += [(where[mine], ids, rows) for mine, ids, rows in part.gathers]
            for i, p in zip(where.tolist(), part.pieces, strict=True):
                pieces[i] = p
        return cls(seq_len, n, gathers, pieces)

    def _segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(non-pad tokens per row, segment lengths of the flattened batch, pad rows): each
        row's documents, then its padding, if any, as one more segment."""
        counts = np.fromiter((len(p) for p in self.pieces), np.int64, self.n)
        flat = np.concatenate(self.pieces) if self.n else np.empty(0, np.int64)
        cs = np.zeros(len(flat) + 1, np.int64)
        np.cumsum(flat, out=cs[1:])
        ends = np.cumsum(counts)
        real = cs[ends] - cs[ends - counts]
        padded = np.flatnonzero(real < self.seq_len)
        lens = np.insert(flat, ends[padded], self.seq_len - real[padded]) if len(padded) else flat
        return real, lens, padded

    def layout(self, outputs: Sequence[str]) -> tuple[Layout, Any]:
        real, lens, padded = self._segments()
        shapes: dict[str, tuple[tuple[int, ...], Any]] = {
            "input_ids": ((self.n, self.seq_len), np.int64),
            "labels": ((self.n, self.seq_len), np.int64),
            "position_ids": ((self.n, self.seq_len), np.int64),
            "cu_seqlens": ((len(lens) + 1,), np.int32),
            "seq_lens": ((self.n,), np.int64),
        }
        layout = [(k, shapes[k][0], np.dtype(shapes[k][1])) for k in outputs]
        return layout, (real, lens, padded)

    def fill(self, out: dict[str, np.ndarray], info: Any) -> None:
        real, lens, padded = info
        ids = out.get("input_ids")
        if ids is None and "labels" in out:
            ids = out["labels"]
        if ids is not None:
            for mine, tokens, rows in self.gathers:
                ids[mine] = tokens[rows]
        tails = [(int(i), int(real[i])) for i in padded.tolist()]
        if "labels" in out:
            labels = out["labels"]
            if ids is not None and labels is not ids:
                np.copyto(labels, ids)
            for i, t in tails:
                labels[i, t:] = IGNORE
        cu = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=cu[1:])
        if "cu_seqlens" in out:
            out["cu_seqlens"][:] = cu
        if "seq_lens" in out:
            out["seq_lens"][:] = real
        if "position_ids" in out:
            self._positions(out["position_ids"], cu, lens, tails)

    def _positions(
        self, pos: np.ndarray, cu: np.ndarray, lens: np.ndarray, tails: list[tuple[int, int]]
    ) -> None:
        """Each token's offset in its document (0 on padding)."""
        starts = cu[:-1]
        inner = np.flatnonzero(starts % self.seq_len)  # documents starting inside a row
        if len(inner) <= 2 * self.n:  # few: column numbers, shifted where a document starts
            np.copyto(pos, _arange(self.seq_len)[None, :])
            for k in inner.tolist():
                row, col = divmod(int(starts[k]), self.seq_len)
                pos[row, col : col + int(lens[k])] -= col
        else:  # many short documents: one vectorized pass
            flat = pos.reshape(-1)
            np.subtract(_arange(flat.size), np.repeat(starts, lens), out=flat)
        for i, t in tails:
            pos[i, t:] = 0


_ARANGE = np.arange(0, dtype=np.int64)
_NO_PIECES = np.empty(0, np.int64)


def _arange(n: int) -> np.ndarray:
    global _ARANGE
    if len(_ARANGE) < n:
        _ARANGE = np.arange(n, dtype=np.int64)
    return _ARANGE[:n]


# -- sources ---------------------------------------------------------------------------------
class TableSource(_Unpicklable):
    """Rows of a table dataset's shards, decoded to uncompressed Arrow IPC in the cache."""

    outputs: tuple[str, ...] = ()

    def __init__(self, ds: TableDataset, columns: Sequence[str] | None) -> None:
        if columns is not None:
            ds._check_columns(columns)
        self.ds = ds
        self.uri, self.version = ds.uri, ds.version
        self.columns = list(columns) if columns is not None else None
        names = self.columns if self.columns is not None else ds.schema.names
        self.schema = pa.schema([ds.schema.field(n) for n in names])
        self.sizes = np.array([s.rows for s in ds.shards], np.int64)
        cols = json.dumps(self.columns)
        self.tag = hashlib.sha256(cols.encode()).hexdigest()[:12]
        self._open: OrderedDict[int, _TableShard] = OrderedDict()

    def name(self, index: int) -> str:
        return f"tables/{self.ds.shards[index].checksum.split(':')[-1]}-{self.tag}.arrow"

    def cached_sizes(self) -> np.ndarray:
        """Bytes each shard takes in the cache, at least (its stored, compressed size)."""
        return np.array([s.bytes for s in self.ds.shards], np.int64)

    def cache_names(self) -> dict[str, int]:
        """Cache file name -> shard index."""
        return {self.name(i): i for i in range(len(self.sizes))}

    def fetch(self, index: int, cache: ShardCache) -> Path:
        """Shard ``index`` in the cache (fetched and decoded on a miss)."""

        def build(tmp: Path) -> None:
            # One record batch: ``take`` on a memory-mapped single chunk touches only the
            # rows it takes (on many chunks it would first concatenate the column).
            decoded = self.ds.read_shard(index, self.columns).combine_chunks()
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, decoded.schema) as w:
                w.write_table(decoded)

        return cache.path(self.name(index), build)

    def shard(self, index: int, cache: ShardCache) -> _TableShard:
        table = self._open.get(index)
        if table is not None:
            self._open.move_to_end(index)
        else:
            table = _TableShard(
                _retry_evicted(
                    lambda: pa.ipc.open_file(
                        pa.memory_map(str(self.fetch(index, cache)))
                    ).read_all()
                )
            )
            _remember(self._open, index, table)
        return table

    def prepare(self, shards: np.ndarray, rows: np.ndarray, cache: ShardCache) -> dict[str, Any]:
        """The batch's columns (a table batch is complete once read): row by row, as a
        shuffled batch takes a row or two from each of many shards."""
        n = len(rows)
        names = self.schema.names
        values: list[list[Any]] = [[None] * n for _ in names]
        dense = [True] * len(names)  # numeric without nulls in every shard touched
        opened: dict[int, _TableShard] = {}
        for i, (s, r) in enumerate(zip(shards.tolist(), rows.tolist(), strict=True)):
            shard = opened.get(s)
            if shard is None:
                shard = opened[s] = self.shard(s, cache)
                for c, (is_dense, _) in enumerate(shard.columns):
                    dense[c] = dense[c] and is_dense
            for c, (is_dense, column) in enumerate(shard.columns):
                values[c][i] = column[r] if is_dense else column[r].as_py()
        out: dict[str, Any] = {}
        for c, name in enumerate(names):
            kind = self.schema.field(name).type
            numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
            col = values[c]
            if dense[c] or ((numeric or pa.types.is_boolean(kind)) and None not in col):
                out[name] = np.fromiter(col, kind.to_pandas_dtype(), n)
            else:
                out[name] = [v.item() if isinstance(v, np.generic) else v for v in col]
        return out

    read = prepare  # a table batch is complete once prepared

    def sample(self, shard: int, row: int, cache: ShardCache) -> dict[str, Any]:
        return {k: v[0] for k, v in self.read(np.array([shard]), np.array([row]), cache).items()}


class _TableShard:
    """A cached table shard, its columns ready for reading single rows: numeric columns
    without nulls as numpy views, the others as Arrow arrays."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.columns: list[tuple[bool, Any]] = []
        for col in table.columns:
            arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
            kind = arr.type
            numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
            if (numeric or pa.types.is_boolean(kind)) and arr.null_count == 0:
                self.columns.append((True, arr.to_numpy(zero_copy_only=False)))
            else:
                self.columns.append((False, arr))


class TokenSource(_Unpicklable):
    """Rows of a packed token dataset, one cache file per ``tokens`` shard object."""

    def __init__(self, packed: PackedTokens, outputs: Sequence[str] | None = None) -> None:
        self.packed = packed
        self.uri, self.version = packed.dataset.uri, packed.dataset.version
        self.outputs = tuple(outputs) if outputs is not None else TOKEN_OUTPUTS
        unknown = sorted(set(self.outputs) - set(TOKEN_OUTPUTS))
        if unknown or not self.outputs:
            raise InvalidInput(
                f"outputs={list(self.outputs)} for {self.uri}: choose one or more of "
                f"{', '.join(TOKEN_OUTPUTS)}"
            )
        self.shard_rows = int(packed.tokens.shards[0] if packed.tokens.shards else packed.rows)
        n = math.ceil(packed.rows / self.shard_rows) if packed.rows else 0
        self.sizes = np.array(
            [min(self.shard_rows, packed.rows - i * self.shard_rows) for i in range(n)], np.int64
        )
        info = next(a for a in packed.dataset.manifest.arrays if a.name == "tokens")
        self.checksums = {o.path.rsplit("/", 3)[-2]: o.checksum for o in info.objects}
        self.fingerprint = f"{packed.dataset.uri}@{packed.dataset.version}"
        self._open: OrderedDict[int, tuple[np.ndarray, list[int], np.ndarray]] = OrderedDict()

    def key(self, index: int) -> str:
        digest = self.checksums.get(str(index), "")
        if digest:
            return digest.split(":")[-1]
        return hashlib.sha256(f"{self.fingerprint}/{index}".encode()).hexdigest()

    def cached_sizes(self) -> np.ndarray:
        """Bytes each shard takes in the cache (its token rows)."""
        row_bytes = int(self.packed.seq_len) * int(self.packed.tokens.dtype.itemsize)
        out: np.ndarray = self.sizes * row_bytes
        return out

    def cache_names(self) -> dict[str, int]:
        """Cache file name -> shard index."""
        out = {}
        for i in range(len(self.sizes)):
            out[f"tokens/{self.key(i)}.npy"] = i
            out[f"tokens/{self.key(i)}.segments.npz"] = i
        return out

    def fetch(self, index: int, cache: ShardCache) -> tuple[Path, Path]:
        """Shard ``index``'s token rows and segment lengths in the cache (fetched on a miss)."""
        lo = index * self.shard_rows
        hi = lo + int(self.sizes[index])
        p = self.packed

        def build_tokens(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(p.tokens[lo:hi]), allow_pickle=False)

        def build_segments(tmp: Path) -> None:
            firsts = np.asarray(p.row_segments[lo:hi], np.int64)
            stop = int(p.row_segments[hi]) if hi < p.rows else p.num_segments
            lengths = np.asarray(p.segments_array[int(firsts[0]) : stop, 2], np.int64)
            bounds = np.append(firsts - firsts[0], len(lengths))
            with open(tmp, "wb") as f:
                np.savez(f, bounds=bounds, lengths=lengths)

        key = self.key(index)
        tokens = cache.path(f"tokens/{key}.npy", build_tokens)
        return tokens, cache.path(f"tokens/{key}.segments.npz", build_segments, keep=(tokens,))

    def shard(self, index: int, cache: ShardCache) -> tuple[np.ndarray, list[int], np.ndarray]:
        """(ids ``(rows, seq_len)`` memory-mapped, first segment of each row and one past the
        last, document lengths) of shard ``index``."""
        got = self._open.get(index)
        if got is not None:
            self._open.move_to_end(index)
        else:

            def load() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                tokens_path, segments_path = self.fetch(index, cache)
                # a plain ndarray over the map: np.memmap's own indexing costs ~10 us a call
                tokens = np.load(tokens_path, mmap_mode="r").view(np.ndarray)
                with np.load(segments_path) as z:
                    return tokens, z["bounds"], z["lengths"]

            tokens, bounds, lengths = _retry_evicted(load)
            got = (tokens, bounds.tolist(), lengths)  # bounds indexed per row: Python ints
            _remember(self._open, index, got)
        return got

    def prepare(self, shards: np.ndarray, rows: np.ndarray, cache: ShardCache) -> TokenRows:
        # Row by row: a shuffled batch takes a row or two from each of many shards, where a
        # vectorized gather per shard costs more than a row copy.
        n = len(rows)
        batch = TokenRows(self.packed.seq_len, n, pieces=[_NO_PIECES] * n)
        opened: dict[int, tuple[np.ndarray, list[int], np.ndarray]] = {}
        for i, (s, r) in enumerate(zip(shards.tolist(), rows.tolist(), strict=True)):
            got = opened.get(s)
            if got is None:
                got = opened[s] = self.shard(s, cache)
            tokens, bounds, lengths = got
            batch.gathers.append((i, tokens, r))
            batch.pieces[i] = lengths[bounds[r] : bounds[r + 1]]
        return batch

    def read(self, shards: np.ndarray, rows: np.ndarray, cache: ShardCache) -> dict[str, Any]:
        return assemble([self.prepare(shards, rows, cache)], self.outputs, tensors=False)[0]

    def sample(self, shard: int, row: int, cache: ShardCache) -> dict[str, Any]:
        batch = self.read(np.array([shard]), np.array([row]), cache)
        return {k: (v if k == "cu_seqlens" else v[0]) for k, v in batch.items()}


def assemble(
    pending: Sequence[TokenRows | dict[str, Any]],
    outputs: Sequence[str],
    tensors: bool,
    allocate: Callable[[int], Any] | None = None,
) -> list[dict[str, Any]]:
    """Finished batches from prepared ones, the token batches' arrays in one :class:`Arena`
    (its buffer from ``allocate`` when that supplies one)."""
    layouts: list[Layout] = []
    infos: list[Any] = []
    for p in pending:
        if isinstance(p, TokenRows):
            layout, info = p.layout(outputs)
        else:
            layout, info = [], None
        layouts.append(layout)
        infos.append(info)
    arena = Arena(layouts, tensors, allocate)
    done = []
    for i, p in enumerate(pending):
        if isinstance(p, TokenRows):
            p.fill(arena.arrays(i), infos[i])
            done.append(arena.outputs(i))
        else:
            done.append(p)
    return done


def merge_tables(parts: Sequence[tuple[np.ndarray, dict[str, Any]]], n: int) -> dict[str, Any]:
    """One table batch of ``n`` rows from parts, each placed at its batch positions."""
    back = np.argsort(np.concatenate([where for where, _ in parts]), kind="stable")
    out: dict[str, Any] = {}
    for key in parts[0][1]:
        values = [p[key] for _, p in parts]
        if all(isinstance(v, np.ndarray) for v in values):
            out[key] = np.concatenate(values)[back]
        else:
            flat = [x for v in values for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
            out[key] = [flat[i] for i in back.tolist()]
    return out
