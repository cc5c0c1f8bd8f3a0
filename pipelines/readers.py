"""Readers: the pieces of a partition -> Arrow tables of documents, bad records quarantined.

Each reader yields blocks of documents with the columns ``_ord`` (uint64, the record's ordinal:
``partition << 40 | record number within the partition``, counting quarantined records too),
``id`` (string), ``text`` (string), ``source_uri`` and ``source_offset`` (byte offset of the line
for JSONL, of the decompressed stream for compressed JSONL; row number for Parquet and CSV; 0 for
text files), followed by the record's other fields. Bad records never stop a read: each becomes a
row of a quarantine table (:data:`QUARANTINE_SCHEMA`) with its location, the reason and the first
bytes of the raw record. Storage outages are not bad input and do raise.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq
import xxhash

from datastore import StorageConfig, open_store, parse_uri, resolve_filesystem
from datastore.errors import NotFound, PermissionDenied, Unauthenticated, Unreachable
from datastore.uri import Location
from pipelines.config import InputConfig
from pipelines.plan import InputFile, Partition, Piece

__all__ = ["ORD_SHIFT", "QUARANTINE_SCHEMA", "Block", "partition_of", "read_partition"]

BLOCK_BYTES = 16 * 1024 * 1024
RAW_PREFIX_BYTES = 4096
ORD_SHIFT = 40

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("source_offset", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("record_bytes", pa.int64()),
        pa.field("raw", pa.binary()),
    ]
)


@dataclass
class Block:
    """Documents read from one stretch of input, and the records quarantined there."""

    docs: pa.Table | None
    bad: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0  # records seen (docs + bad)
    nbytes: int = 0  # raw input bytes consumed

    def quarantine(self) -> pa.Table:
        """The bad records as a :data:`QUARANTINE_SCHEMA` table."""
        return pa.Table.from_pylist(self.bad, schema=QUARANTINE_SCHEMA)


class _Ords:
    """Hands out record ordinals of one partition."""

    def __init__(self, partition: int) -> None:
        self.base = partition << ORD_SHIFT
        self.next = 0

    def take(self, n: int) -> np.ndarray:
        out = np.arange(self.base + self.next, self.base + self.next + n, dtype=np.uint64)
        self.next += n
        return out

    def one(self) -> int:
        self.next += 1
        return self.base + self.next - 1


def read_partition(
    partition: Partition,
    files: Mapping[int, InputFile] | Sequence[InputFile],
    config: InputConfig,
    storage: StorageConfig | None,
) -> Iterator[Block]:
    """Read every piece of ``partition`` in order, yielding blocks of documents; ``files`` maps
    the pieces' file indexes to the input files."""
    ords = _Ords(partition.index)
    for piece in partition.pieces:
        f = files[piece.file]
        if f.missing:
            yield _bad_block(f.uri, piece.start, "missing input: file or object does not exist")
            continue
        if f.size == 0:
            yield _bad_block(f.uri, 0, "empty file")
            ords.one()
            continue
        try:
            if f.format == "jsonl":
                yield from _read_jsonl(f, piece, config, storage, ords)
            elif f.format == "parquet":
                yield from _read_parquet(f, piece, config, storage, ords)
            elif f.format == "csv":
                yield from _read_csv(f, config, storage, ords)
            else:
                yield from _read_text(f, config, storage, ords)
        except (NotFound, PermissionDenied, FileNotFoundError, PermissionError) as err:
            yield _bad_block(f.uri, piece.start, f"unreadable: {err}")
        except (OSError, pa.ArrowInvalid, EOFError, ValueError) as err:
            if _is_outage(err):
                raise
            yield _bad_block(f.uri, piece.start, f"unreadable: {type(err).__name__}: {err}")


def partition_of(ords: np.ndarray) -> np.ndarray:
    """The partition index of each document ordinal."""
    return (np.asarray(ords, dtype=np.uint64) >> np.uint64(ORD_SHIFT)).astype(np.int64)


def _is_outage(err: BaseException) -> bool:
    return isinstance(err, (Unreachable, Unauthenticated, ConnectionError, TimeoutError))


def _bad_block(uri: str, offset: int, reason: str) -> Block:
    return Block(
        None,
        [{"source_uri": uri, "source_offset": offset, "reason": reason, "record_bytes": None}],
        records=1,
    )


def _oversize(
    uri: str, offset: int, length: int, config: InputConfig, prefix: bytes | None
) -> Block:
    """The quarantine block for one record longer than ``input.max_record_bytes``."""
    return Block(
        None,
        [
            {
                "source_uri": uri,
                "source_offset": offset,
                "reason": f"record of {length} bytes exceeds input.max_record_bytes "
                f"({config.max_record_bytes})",
                "record_bytes": length,
                "raw": prefix,
            }
        ],
        records=1,
        nbytes=length,
    )


def _store_and_key(uri: str, storage: StorageConfig | None) -> tuple[Any, str]:
    loc = parse_uri(uri)
    head, _, name = loc.path.rpartition("/")
    return open_store(Location(loc.scheme, loc.bucket, head), storage), name


def _docs_table(
    table: pa.Table,
    ords: np.ndarray,
    offsets: np.ndarray,
    uri: str,
    config: InputConfig,
) -> pa.Table:
    """Put the standard columns first: _ord, id, text, source_uri, source_offset, then others."""
    n = table.num_rows
    text = table.column(config.text_field)
    if not pa.types.is_string(text.type):
        text = pc.cast(text, pa.string())
    id_col = _ids(table, offsets, uri, config)
    extras = [
        (name, table.column(name))
        for name in table.column_names
        if name not in (config.text_field, config.id_field)
        and name not in ("_ord", "id", "text", "source_uri", "source_offset")
    ]
    cols: list[Any] = [
        pa.array(ords, pa.uint64()),
        id_col,
        text,
        pa.array([uri] * n, pa.string()) if n else pa.array([], pa.string()),
        pa.array(offsets, pa.int64()),
    ]
    names = ["_ord", "id", "text", "source_uri", "source_offset"]
    for name, col in extras:
        cols.append(col)
        names.append(name)
    return pa.table(cols, names=names)


def _ids(table: pa.Table, offsets: np.ndarray, uri: str, config: InputConfig) -> pa.Array:
    """The record's own id (as a string) where it has one, else a stable id derived from the
    source location (xxh3-64 of ``uri#offset``, hex)."""

    def derived() -> pa.Array:
        prefix = f"{uri}#".encode()
        return pa.array(
            [xxhash.xxh3_64_hexdigest(prefix + str(int(o)).encode()) for o in offsets],
            pa.string(),
        )

    if config.id_field not in table.column_names:
        return derived()
    own = table.column(config.id_field)
    if not pa.types.is_string(own.type):
        try:
            own = pc.cast(own, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return derived()
    if own.null_count == 0:
        return own
    return pc.coalesce(own, derived())


# -- JSONL --------------------------------------------------------------------------------------


def _decompressed_chunks(
    f: InputFile, storage: StorageConfig | None
) -> Iterator[tuple[bytes, int]]:
    """The decompressed bytes of ``f`` in blocks, with the (decompressed) offset of each."""
    fs, path = resolve_filesystem(f.uri, storage)
    pos = 0
    with fs.open_input_stream(path, compression=f.compression) as stream:
        while True:
            data = stream.read(BLOCK_BYTES)
            if not data:
                return
            yield data, pos
            pos += len(data)


def _line_blocks(
    chunks: Iterator[tuple[bytes, int]], max_record: int
) -> Iterator[tuple[bytes, int] | tuple[None, int, int, bytes]]:
    """Complete-line blocks ``(data, offset)`` of a stream (compressed files); a line longer
    than ``max_record`` comes out as ``(None, offset, length, prefix)`` without ever being
    held whole."""
    carry = b""
    carry_off = 0
    oversize: tuple[int, int, bytes] | None = None  # (offset, length so far, prefix)
    for data, _off in chunks:
        if oversize is not None:
            nl = data.find(b"\n")
            if nl < 0:
                oversize = (oversize[0], oversize[1] + len(data), oversize[2])
                continue
            yield (None, oversize[0], oversize[1] + nl, oversize[2])
            carry_off = oversize[0] + oversize[1] + nl + 1
            data = data[nl + 1 :]
            oversize = None
        buf = carry + data if carry else data
        last = buf.rfind(b"\n")
        if last < 0:
            carry = buf
        else:
            yield buf[: last + 1], carry_off
            carry_off += last + 1
            carry = buf[last + 1 :]
        if len(carry) > max_record:
            oversize = (carry_off, len(carry), carry[:RAW_PREFIX_BYTES])
            carry = b""
    if oversize is not None:
        yield (None, oversize[0], oversize[1], oversize[2])
    elif carry:
        yield carry, carry_off


def _read_jsonl(
    f: InputFile,
    piece: Piece,
    config: InputConfig,
    storage: StorageConfig | None,
    ords: _Ords,
) -> Iterator[Block]:
    if f.compression is None:
        store, key = _store_and_key(f.uri, storage)
        items: Iterator[Any] = _range_line_blocks(
            lambda offset, n: store.get_range(key, offset, n),
            piece.start,
            piece.end,
            config.max_record_bytes,
        )
    else:
        items = _line_blocks(_decompressed_chunks(f, storage), config.max_record_bytes)
    for item in items:
        if item[0] is None:
            _, offset, length, prefix = item
            ords.one()
            yield _oversize(f.uri, offset, length, config, prefix)
            continue
        data, offset = item
        yield _parse_jsonl_block(data, offset, f.uri, config, ords)


def _range_line_blocks(
    read: Callable[[int, int], bytes], start: int, end: int, max_record: int
) -> Iterator[tuple[memoryview, int] | tuple[None, int, int, bytes]]:
    """Like :func:`_line_blocks`, for a file with random access: each block is read at a line
    start, so blocks are zero-copy views of what was read (the partial last line is read again
    with the next block rather than copied)."""
    pos = start
    if start > 0:  # begin at the first line that starts at or after ``start``
        probe, step = start - 1, 1 << 16
        while True:
            data = read(probe, step)
            step = BLOCK_BYTES
            if not data:
                return
            i = data.find(b"\n")
            if i >= 0:
                pos = probe + i + 1
                break
            probe += len(data)
    while end < 0 or pos < end:
        data = read(pos, BLOCK_BYTES)
        if not data:
            return
        last = data.rfind(b"\n")
        if last < 0:
            if len(data) < BLOCK_BYTES:  # the file's last line, without a newline
                yield memoryview(data), pos
                return
            length, found = _line_length(read, pos, data)
            if length > max_record:
                yield (None, pos, length, data[:RAW_PREFIX_BYTES])
            else:
                yield memoryview(read(pos, length + int(found))), pos
            pos += length + 1
            continue
        view = memoryview(data)[: last + 1]
        if end >= 0 and pos + last + 1 > end:
            cut = data.find(b"\n", max(0, end - pos - 1))
            yield view[: cut + 1], pos
            return
        yield view, pos
        pos += last + 1


def _line_length(read: Callable[[int, int], bytes], pos: int, head: bytes) -> tuple[int, bool]:
    """Length of the line starting at ``pos`` (whose first bytes are ``head``), scanning ahead
    without keeping it; and whether a newline ends it (False: it ends the file)."""
    length = len(head)
    while True:
        data = read(pos + length, BLOCK_BYTES)
        if not data:
            return length, False
        i = data.find(b"\n")
        if i >= 0:
            return length + i, True
        length += len(data)


def _line_bounds(data: bytes | memoryview) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, without the newline) of each non-blank line.

    Only short lines can be blank in practice, so only lines of fewer than 16 bytes are
    inspected one by one; a longer whitespace-only line makes the fast parser's row count
    disagree, and the line-by-line path skips it.
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(arr)]))
    keep = starts < ends
    short = np.flatnonzero(keep & (ends - starts < 16))
    for i in short.tolist():
        if not bytes(data[starts[i] : ends[i]]).strip():
            keep[i] = False
    return starts[keep], ends[keep]


def _parse_jsonl_block(
    data: bytes | memoryview, base: int, uri: str, config: InputConfig, ords: _Ords
) -> Block:
    starts, ends = _line_bounds(data)
    n = len(starts)
    block = Block(None, records=n, nbytes=len(data))
    if n == 0:
        return block
    too_big = (ends - starts) > config.max_record_bytes
    if not too_big.any():
        table = _fast_json(data, n, config)
        if table is not None:
            block.docs = _split_missing_text(table, ords.take(n), base + starts, uri, config, block)
            return block
    block.docs = _slow_json(bytes(data), starts, ends, base, uri, config, ords, block)
    return block


def _fast_json(data: bytes | memoryview, n: int, config: InputConfig) -> pa.Table | None:
    """pyarrow's JSON reader on the whole block, if the block is clean (else None)."""
    try:
        codecs.utf_8_decode(data, "strict", True)
        table = pjson.read_json(
            pa.BufferReader(data),
            read_options=pjson.ReadOptions(use_threads=False, block_size=len(data) + 1),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    if table.num_rows != n:
        return None
    if config.text_field in table.column_names:
        t = table.column(config.text_field).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            return None
    return table


def _split_missing_text(
    table: pa.Table,
    ord_arr: np.ndarray,
    offsets: np.ndarray,
    uri: str,
    config: InputConfig,
    block: Block,
) -> pa.Table | None:
    """Quarantine rows without a (string) text field; return the rest as documents."""
    if config.text_field not in table.column_names:
        for off in offsets:
            block.bad.append(_missing_text(uri, int(off), config))
        return None
    text = table.column(config.text_field)
    valid = pc.is_valid(text)
    if pc.all(valid).as_py():
        return _docs_table(table, ord_arr, offsets, uri, config)
    mask = np.asarray(valid.to_numpy(zero_copy_only=False), dtype=bool)
    for off in offsets[~mask]:
        block.bad.append(_missing_text(uri, int(off), config))
    if not mask.any():
        return None
    return _docs_table(table.filter(pa.array(mask)), ord_arr[mask], offsets[mask], uri, config)


def _missing_text(uri: str, offset: int, config: InputConfig) -> dict[str, Any]:
    return {
        "source_uri": uri,
        "source_offset": offset,
        "reason": f"record has no string field {config.text_field!r} (input.text_field)",
        "record_bytes": None,
    }


def _slow_json(
    data: bytes,
    starts: np.ndarray,
    ends: np.ndarray,
    base: int,
    uri: str,
    config: InputConfig,
    ords: _Ords,
    block: Block,
) -> pa.Table | None:
    """Line by line: find the bad records, then parse the good ones together."""
    good: list[bytes] = []
    good_rows: list[dict[str, Any]] = []
    good_ords: list[int] = []
    good_offsets: list[int] = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        line = data[s:e]
        if not line.strip():
            continue  # a long whitespace-only line: blank, like the short ones
        ord_ = ords.one()
        offset = base + s
        reason = None
        record: Any = None
        if e - s > config.max_record_bytes:
            reason = _oversize(uri, offset, e - s, config, None).bad[0]["reason"]
        else:
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                reason = f"invalid UTF-8 at byte {offset + err.start}"
            except json.JSONDecodeError as err:
                reason = f"malformed JSON: {err.msg} at column {err.colno}"
            else:
                if not isinstance(record, dict):
                    reason = f"record is a JSON {type(record).__name__}, not an object"
                elif not isinstance(record.get(config.text_field), str):
                    reason = _missing_text(uri, 0, config)["reason"]
        if reason is not None:
            block.bad.append(
                {
                    "source_uri": uri,
                    "source_offset": offset,
                    "reason": reason,
                    "record_bytes": e - s,
                    "raw": line[:RAW_PREFIX_BYTES],
                }
            )
            continue
        good.append(line)
        good_rows.append(record)
        good_ords.append(ord_)
        good_offsets.append(offset)
    if not good:
        return None
    joined = b"\n".join(good) + b"\n"
    try:
        table = pjson.read_json(
            pa.BufferReader(joined),
            read_options=pjson.ReadOptions(use_threads=False, block_size=len(joined) + 1),
        )
        if table.num_rows != len(good):
            raise pa.ArrowInvalid("row count mismatch")
    except pa.ArrowInvalid:
        table = _loose_table(good_rows, config)
    return _docs_table(
        table,
        np.array(good_ords, dtype=np.uint64),
        np.array(good_offsets, dtype=np.int64),
        uri,
        config,
    )


def _loose_table(rows: list[dict[str, Any]], config: InputConfig) -> pa.Table:
    """Records whose fields change type between lines: keep text and id as they are and store
    every other field as its JSON text, so nothing is lost."""
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    cols: dict[str, list[Any]] = {}
    for name in names:
        if name == config.text_field:
            cols[name] = [r[name] for r in rows]
        elif name == config.id_field:
            cols[name] = [None if r.get(name) is None else str(r[name]) for r in rows]
        else:
            cols[name] = [
                None if name not in r else json.dumps(r[name], ensure_ascii=False) for r in rows
            ]
    return pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})


# -- Parquet, CSV, text -----------------------------------------------------------------------


def _read_parquet(
    f: InputFile,
    piece: Piece,
    config: InputConfig,
    storage: StorageConfig | None,
    ords: _Ords,
) -> Iterator[Block]:
    fs, path = resolve_filesystem(f.uri, storage)
    with fs.open_input_file(path) as handle:
        pf = pq.ParquetFile(handle)
        row = 0
        last = pf.num_row_groups if piece.end < 0 else piece.end
        for rg in range(pf.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if piece.start <= rg < last:
                table = pf.read_row_group(rg)
                offsets = np.arange(row, row + n, dtype=np.int64)
                block = Block(None, records=n, nbytes=pf.metadata.row_group(rg).total_byte_size)
                block.docs = _split_missing_text(
                    _string_text(table, config), ords.take(n), offsets, f.uri, config, block
                )
                yield block
            row += n


def _string_text(table: pa.Table, config: InputConfig) -> pa.Table:
    if config.text_field not in table.column_names:
        return table
    t = table.column(config.text_field).type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return table
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        # Validate: a binary column may hold invalid UTF-8.
        col = table.column(config.text_field)
        try:
            cast = pc.cast(col, pa.string())
            cast.validate(full=True)
        except pa.ArrowInvalid:
            vals = [
                v if v is None else v.decode("utf-8", "strict") if _utf8(v) else None
                for v in col.to_pylist()
            ]
            cast = pa.chunked_array([pa.array(vals, pa.string())])
        i = table.column_names.index(config.text_field)
        return table.set_column(i, config.text_field, cast)
    i = table.column_names.index(config.text_field)
    return table.set_column(i, config.text_field, pa.nulls(table.num_rows, pa.string()))


def _utf8(v: bytes) -> bool:
    try:
        v.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_csv(
    f: InputFile, config: InputConfig, storage: StorageConfig | None, ords: _Ords
) -> Iterator[Block]:
    fs, path = resolve_filesystem(f.uri, storage)
    bad: list[dict[str, Any]] = []

    def on_invalid(row: Any) -> str:
        bad.append(
            {
                "source_uri": f.uri,
                "source_offset": int(row.number or -1),
                "reason": f"malformed CSV row: expected {row.expected_columns} columns, "
                f"got {row.actual_columns}",
                "record_bytes": len(row.text.encode()) if row.text else None,
                "raw": row.text.encode()[:RAW_PREFIX_BYTES] if row.text else None,
            }
        )
        return "skip"

    delimiter = "\t" if f.uri.endswith((".tsv", ".tsv.gz", ".tsv.zst")) else config.csv_delimiter
    with fs.open_input_stream(path, compression=f.compression) as stream:
        reader = pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(use_threads=False, block_size=BLOCK_BYTES),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(
                column_types={config.text_field: pa.string(), config.id_field: pa.string()}
            ),
        )
        row = 0
        for batch in reader:
            table = pa.Table.from_batches([batch])
            n = table.num_rows
            block = Block(None, bad, records=n + len(bad))
            bad = []
            offsets = np.arange(row, row + n, dtype=np.int64)
            row += n
            block.docs = _split_missing_text(table, ords.take(n), offsets, f.uri, config, block)
            block.nbytes = int(table.nbytes)
            yield block
    if bad:
        yield Block(None, bad, records=len(bad))


def _read_text(
    f: InputFile, config: InputConfig, storage: StorageConfig | None, ords: _Ords
) -> Iterator[Block]:
    if f.size > config.max_record_bytes:
        ords.one()
        yield _oversize(f.uri, 0, f.size, config, None)
        return
    if f.compression is None:
        store, key = _store_and_key(f.uri, storage)
        raw = store.get(key)
    else:
        fs, path = resolve_filesystem(f.uri, storage)
        with fs.open_input_stream(path, compression=f.compression) as stream:
            raw = stream.read()
    ord_ = ords.one()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        yield Block(
            None,
            [
                {
                    "source_uri": f.uri,
                    "source_offset": 0,
                    "reason": f"invalid UTF-8 at byte {err.start}",
                    "record_bytes": len(raw),
                    "raw": raw[:RAW_PREFIX_BYTES],
                }
            ],
            records=1,
            nbytes=len(raw),
        )
        return
    table = pa.table({config.text_field: pa.array([text], pa.string())})
    offsets = np.zeros(1, dtype=np.int64)
    block = Block(None, records=1, nbytes=len(raw))
    block.docs = _docs_table(table, np.array([ord_], np.uint64), offsets, f.uri, config)
    yield block
