"""Text normalization: Unicode NFC, control characters out, whitespace collapsed.

Normalization runs before the filters and dedup, so both see the same canonical text: two copies
of a page that differ only in trailing spaces, CRLF line ends or decomposed accents hash alike.

The stage is vectorized: documents are taken in slices of about ``SLICE_BYTES`` of text, and a
slice's UTF-8 bytes are one numpy array. Only the documents that contain something a regex has to
fix (a control character, a non-ASCII space, a character that fails the NFC quick check, see
:func:`char_classes`) go through :mod:`pyarrow.compute`'s RE2 and utf8proc kernels, each step on
just the documents that need it. The whitespace collapse, which touches nearly every document,
works on the bytes: it finds the runs of two or more whitespace bytes, tabs, and whitespace at the
edges of documents, and rewrites only those.

This module also holds the helpers that expose an Arrow string column as one numpy byte array
plus offsets (:func:`text_array`, :func:`utf8_buffers`, :func:`utf8_array`, :func:`slices`) and
classify its characters (:func:`special_bytes`, :func:`code_points`, :func:`char_classes`),
which the filters reuse.
"""

from __future__ import annotations

import functools
import itertools
import unicodedata

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from datastore.errors import InvalidInput
from pipelines.config import NormalizeConfig
from pipelines.stages._tables import cached_table
from pipelines.stages.base import Stage, StageOutput, drop_table

__all__ = [
    "C1_CONTROL",
    "NFC_UNSTABLE",
    "SLICE_BYTES",
    "SPACE",
    "Normalize",
    "char_classes",
    "code_points",
    "docs_of",
    "slices",
    "special_bytes",
    "text_array",
    "utf8_array",
    "utf8_buffers",
]

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

# RE2 patterns (Arrow matches them on code points). Line-break controls become "\n" so that
# removing controls never glues two lines together; the other C0/C1 controls go.
_CONTROL_BREAKS = r"\r\n?|[\x0b\x0c\x{85}]"
_CONTROLS = r"[\x00-\x08\x0e-\x1f\x7f-\x{9f}]"
# Whitespace other than space, tab and newline (Python's str.isspace set): line-like ones become
# "\n", horizontal ones (Unicode Zs and the unit separator) become " ".
_WS_BREAKS = r"\r\n?|[\x0b\x0c\x1c-\x1e\x{85}\x{2028}\x{2029}]"
_WS_SPACES = r"[\x1f\x{a0}\x{1680}\x{2000}-\x{200a}\x{202f}\x{205f}\x{3000}]"


class Normalize(Stage):
    """Unicode NFC, control characters stripped, whitespace collapsed; drops emptied documents.

    In order, each step switchable in :class:`~pipelines.config.NormalizeConfig`:

    * ``strip_control``: C0/C1 control characters are removed, except tab and newline;
      ``\\r\\n``, ``\\r``, vertical tab, form feed and NEL become ``\\n`` (they end lines).
    * ``nfc``: Unicode canonical composition (``e`` + U+0301 becomes ``é``).
    * ``whitespace``: every other whitespace character (Python's ``str.isspace`` set) becomes a
      space or a newline; in each line runs of spaces and tabs become one space and the line is
      trimmed; runs of blank lines become one blank line; the document is stripped.

    A document that is empty afterwards is dropped with reason ``normalize:empty`` (value 0).
    Counter ``changed``: documents whose text changed (including those dropped as empty).
    """

    name = "normalize"

    def __init__(self, config: NormalizeConfig) -> None:
        self.config = config

    def apply(self, table: pa.Table) -> StageOutput:
        """Normalize the ``text`` column of one batch; other columns pass through unchanged."""
        cfg = self.config
        if not cfg.enabled or table.num_rows == 0:
            return StageOutput(table, counters={"changed": 0})
        text = text_array(table)
        pieces = [
            self._normalize(text.slice(lo, hi - lo))
            for lo, hi in slices(utf8_buffers(text)[1], SLICE_BYTES)
        ]
        changed = np.concatenate([piece[2] for piece in pieces])
        lengths = np.concatenate([np.diff(piece[1]) for piece in pieces])
        if changed.any():
            offsets = np.concatenate(([0], np.cumsum(lengths)))
            data = np.concatenate([piece[0] for piece in pieces])
            text = utf8_array(data, offsets, text.type)

        column = table.schema.get_field_index("text")
        out = table.set_column(column, table.schema.field(column).with_type(text.type), text)
        empty = lengths == 0
        counters = {"changed": int(np.count_nonzero(changed))}
        if not empty.any():
            return StageOutput(out, counters=counters)
        ords = table.column("_ord").combine_chunks().filter(pa.array(empty))
        dropped = drop_table(ords, ["normalize:empty"] * len(ords), [0.0] * len(ords))
        return StageOutput(out.filter(pa.array(~empty)), dropped, counters)

    def _normalize(self, text: pa.Array) -> tuple[U8, I64, Bool]:
        """One slice of the batch: new bytes and offsets, and which documents changed."""
        cfg = self.config
        data, offsets = utf8_buffers(text)
        changed = np.zeros(len(text), dtype=np.bool_)
        special = special_bytes(data)
        needs = _docs_needing_fixups(data, offsets, special, cfg)
        if any(need.any() for need in needs.values()):
            text, changed = _apply_fixups(text, needs)
            data, offsets = utf8_buffers(text)
            low = np.flatnonzero(data < 32)
        else:
            low = special[data[special] < 32]
        if cfg.whitespace:
            data, offsets, collapsed = _collapse_whitespace(data, offsets, low)
            changed |= collapsed
        return data, offsets, changed


def text_array(table: pa.Table, column: str = "text") -> pa.Array:
    """The batch's text column as one ``string`` or ``large_string`` array without nulls (a null
    text counts as the empty document); raises :class:`InvalidInput` if there is no such column
    or it does not hold text."""
    if column not in table.column_names:
        raise InvalidInput(
            f"document batch has no {column!r} column (columns: {', '.join(table.column_names)}); "
            "the reader must put each document's text there"
        )
    chunked = table.column(column)
    if chunked.num_chunks == 1:
        arr = chunked.chunk(0)
    elif chunked.num_chunks == 0:
        arr = pa.array([], chunked.type)
    else:
        arr = chunked.combine_chunks()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        if not pa.types.is_string_view(arr.type):
            raise InvalidInput(f"column {column!r} must hold text (string), not {arr.type}")
        arr = arr.cast(pa.large_string())
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    return arr


def utf8_buffers(arr: pa.Array) -> tuple[U8, I64]:
    """Zero-copy view of a string array: all documents' UTF-8 bytes back to back, and int64
    offsets (``len(arr) + 1`` of them, starting at 0) so that document ``i`` is
    ``data[offsets[i]:offsets[i + 1]]``."""
    if len(arr) == 0:
        return np.empty(0, dtype=np.uint8), np.zeros(1, dtype=np.int64)
    _, off_buf, data_buf = arr.buffers()
    dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(off_buf, dtype=dtype)[arr.offset : arr.offset + len(arr) + 1]
    offsets = offsets.astype(np.int64)
    if data_buf is None or offsets[-1] == offsets[0]:
        return np.empty(0, dtype=np.uint8), offsets - offsets[0]
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data, offsets - offsets[0]


def utf8_array(data: U8, offsets: I64, like: pa.DataType) -> pa.Array:
    """Build a string array from :func:`utf8_buffers`-style bytes and offsets, of type ``like``
    (``string`` or ``large_string``; ``string`` only while the bytes fit its 32-bit offsets)."""
    n = len(offsets) - 1
    if pa.types.is_string(like) and offsets[-1] < 2**31:
        off_buf = pa.py_buffer(offsets.astype(np.int32))
        typ = pa.string()
    else:
        off_buf = pa.py_buffer(np.ascontiguousarray(offsets, dtype=np.int64))
        typ = pa.large_string()
    return pa.Array.from_buffers(typ, n, [None, off_buf, pa.py_buffer(data)])


#: Documents are processed in slices of about this many bytes of text: numpy then works on
#: arrays that stay in cache and are recycled by the allocator instead of fresh pages, which is
#: several times faster on large batches than whole-batch arrays.
SLICE_BYTES = 2 * 1024 * 1024


def slices(offsets: I64, target: int) -> list[tuple[int, int]]:
    """Split documents into consecutive ranges ``(lo, hi)`` of about ``target`` bytes each (a
    larger document makes a range of its own)."""
    n_docs = len(offsets) - 1
    if n_docs == 0:
        return []
    marks = np.arange(target, int(offsets[-1]), target)
    cuts = np.unique(np.searchsorted(offsets, marks, side="right").clip(1, n_docs - 1))
    bounds = [0, *cuts.tolist(), n_docs] if n_docs > 1 else [0, 1]
    return [(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def docs_of(positions: I64, offsets: I64) -> I64:
    """The document index of each byte position (``offsets`` as from :func:`utf8_buffers`)."""
    return np.searchsorted(offsets, positions, side="right").astype(np.int64) - 1


# Flags of :func:`char_classes`.
NFC_UNSTABLE = 1  # may change under NFC, alone or next to its neighbours
SPACE = 2  # whitespace for Python's str.isspace (non-ASCII ones only)
C1_CONTROL = 4  # U+0080-U+009F


@functools.cache
def char_classes() -> U8:
    """Flags per code point (``NFC_UNSTABLE``, ``SPACE``, ``C1_CONTROL``), from Python's
    :mod:`unicodedata`; built once per machine (about a third of a second; see
    :mod:`pipelines.stages._tables`).

    ``NFC_UNSTABLE`` marks what the NFC quick check does not answer "yes" for: combining marks
    (canonical combining class > 0), characters NFC replaces, characters that can be the second
    half of a canonical composition, and code points unassigned in Python's Unicode version
    (a newer utf8proc may know them). Text without any of these is already NFC.
    """
    return cached_table("char-classes", 1, _build_char_classes).astype(np.uint8, copy=False)


def _build_char_classes() -> U8:
    table = np.zeros(0x110000, dtype=np.uint8)
    spaces = [0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
    table[spaces] |= SPACE
    table[0x80:0xA0] |= C1_CONTROL
    unstable: list[int] = []
    combining, decomposition = unicodedata.combining, unicodedata.decomposition
    is_normalized, category = unicodedata.is_normalized, unicodedata.category
    for cp in range(0x300, 0x110000):
        ch = chr(cp)
        if combining(ch) or not is_normalized("NFC", ch) or category(ch) == "Cn":
            unstable.append(cp)
        dec = decomposition(ch)
        if dec and dec[0] != "<":
            parts = dec.split()
            if len(parts) == 2:
                unstable.append(int(parts[1], 16))
    table[unstable] |= NFC_UNSTABLE
    table[0xD800:0xE000] = 0  # surrogates never occur in valid UTF-8
    return table


def code_points(data: U8, leads: I64) -> I64:
    """Decode the UTF-8 characters whose lead bytes (>= 0xC0) are at ``leads``."""
    last = len(data) - 1
    b0 = data[leads].astype(np.int64)
    b1 = (data[np.minimum(leads + 1, last)] & 0x3F).astype(np.int64)
    b2 = (data[np.minimum(leads + 2, last)] & 0x3F).astype(np.int64)
    b3 = (data[np.minimum(leads + 3, last)] & 0x3F).astype(np.int64)
    two = ((b0 & 0x1F) << 6) | b1
    three = ((b0 & 0x0F) << 12) | (b1 << 6) | b2
    four = ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3
    cps = np.where(b0 < 0xE0, two, np.where(b0 < 0xF0, three, four))
    return np.minimum(cps, 0x10FFFF)


def special_bytes(data: U8) -> I64:
    """Positions of the bytes outside printable ASCII (below 0x20 or from 0x7F): controls,
    tabs, newlines and every byte of a non-ASCII character. In Latin-script text these are few,
    so everything that follows works on a small array."""
    return np.flatnonzero((data - np.uint8(32)) >= np.uint8(95))


# The regex steps, in order, as (step, [(pattern, replacement), ...]); "nfc" is utf8_normalize.
_STEPS: dict[str, list[tuple[str, str]]] = {
    "control": [(_CONTROL_BREAKS, "\n"), (_CONTROLS, "")],
    "nfc": [],
    "whitespace": [(_WS_BREAKS, "\n"), (_WS_SPACES, " ")],
}


def _docs_needing_fixups(
    data: U8, offsets: I64, special: I64, cfg: NormalizeConfig
) -> dict[str, Bool]:
    """For each regex step that is on, which documents contain something it has to fix."""
    n_docs = len(offsets) - 1
    value = data[special]
    leads = special[value >= 0xC0]
    classes = char_classes()[code_points(data, leads)] if len(leads) else np.zeros(0, np.uint8)
    c0 = (value < 32) & (value != 9) & (value != 10)  # C0 controls but tab and newline
    flagged: dict[str, list[I64]] = {}
    if cfg.strip_control:
        flagged["control"] = [
            special[c0 | (value == 0x7F)],
            leads[(classes & C1_CONTROL) != 0],
        ]
    if cfg.nfc:
        flagged["nfc"] = [leads[(classes & NFC_UNSTABLE) != 0]]
    if cfg.whitespace:
        # \r, \v, \f and \x1c-\x1f are still there when controls are kept
        lows = [] if cfg.strip_control else [special[c0]]
        flagged["whitespace"] = [*lows, leads[(classes & SPACE) != 0]]
    needs: dict[str, Bool] = {}
    for step, positions in flagged.items():
        need = np.zeros(n_docs, dtype=np.bool_)
        need[docs_of(np.concatenate(positions), offsets)] = True
        needs[step] = need
    return needs


def _apply_fixups(text: pa.Array, needs: dict[str, Bool]) -> tuple[pa.Array, Bool]:
    """Run each regex/NFC step on the documents flagged for it, in order, and splice them back.

    Returns the new array and which documents changed."""
    changed = np.zeros(len(text), dtype=np.bool_)
    for step, need in needs.items():
        if not need.any():
            continue
        rows = pa.array(np.flatnonzero(need))
        before = text.take(rows)
        after = before
        for pattern, replacement in _STEPS[step]:
            after = pc.replace_substring_regex(after, pattern, replacement)
        if step == "nfc":
            after = pc.utf8_normalize(after, "NFC")
        changed[need] |= pc.not_equal(before, after).to_numpy(zero_copy_only=False)
        text = pc.replace_with_mask(text, pa.array(need), after)
    return text, changed


def _expand(starts: I64, ends: I64) -> I64:
    """All integers of the ranges ``[starts[i], ends[i])``, concatenated."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    result: I64 = np.arange(total, dtype=np.int64) + shift
    return result


def _collapse_whitespace(data: U8, offsets: I64, low: I64) -> tuple[U8, I64, Bool]:
    """Collapse whitespace as described in :class:`Normalize`, on bytes.

    By now the only whitespace bytes left are space, tab and newline (anything else was mapped
    by the fix-ups, and remaining control bytes are not whitespace). A run of whitespace inside a
    document becomes one space if it holds no newline, else one newline, or two (one blank line)
    if it holds two or more; a run at either end of a document disappears. Only runs that change
    are touched: those longer than one byte, single tabs, and single whitespace bytes at the
    edges of a document. ``low`` holds the positions of the bytes below 0x20. Returns the new
    bytes and offsets and which documents changed.
    """
    n = len(data)
    n_docs = len(offsets) - 1
    if n == 0:
        return data, offsets, np.zeros(n_docs, dtype=np.bool_)
    low_value = data[low]
    newlines = low[low_value == 10]
    tabs = low[low_value == 9]
    ws = data <= 32
    ws[low[(low_value != 9) & (low_value != 10)]] = False  # other controls, kept by config

    edge = np.zeros(n + 1, dtype=np.bool_)
    edge[offsets] = True
    pairs = np.flatnonzero(ws[:-1] & ws[1:])
    pairs = pairs[~edge[pairs + 1]]  # a run never continues into the next document
    if len(pairs):
        cut = np.flatnonzero(pairs[1:] != pairs[:-1] + 1) + 1
        long_starts = pairs[np.concatenate(([0], cut))]
        long_ends = pairs[np.concatenate((cut - 1, [len(pairs) - 1]))] + 2
    else:
        long_starts = long_ends = np.empty(0, dtype=np.int64)

    nonempty = offsets[:-1] < offsets[1:]
    firsts = offsets[:-1][nonempty]
    lasts = offsets[1:][nonempty] - 1
    singles = np.unique(np.concatenate((tabs, firsts[ws[firsts]], lasts[ws[lasts]])))
    if len(long_starts) and len(singles):
        j = np.searchsorted(long_starts, singles, side="right") - 1
        inside = (j >= 0) & (singles < long_ends[np.maximum(j, 0)])
        singles = singles[~inside]
    starts = np.concatenate((long_starts, singles))
    ends = np.concatenate((long_ends, singles + 1))
    if len(starts) == 0:
        return data, offsets, np.zeros(n_docs, dtype=np.bool_)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]

    breaks = np.searchsorted(newlines, ends) - np.searchsorted(newlines, starts)
    target = np.where(breaks == 0, 1, np.minimum(breaks, 2))
    target[edge[starts] | edge[ends]] = 0
    length = ends - starts
    touch = (length != target) | ((length == 1) & (data[starts] == 9))
    starts, ends, target, breaks = starts[touch], ends[touch], target[touch], breaks[touch]
    if len(starts) == 0:
        return data, offsets, np.zeros(n_docs, dtype=np.bool_)

    out = data.copy()
    first = starts[target >= 1]
    out[first] = np.where(breaks[target >= 1] > 0, 10, 32).astype(np.uint8)
    out[starts[target == 2] + 1] = 10
    gone = _expand(starts + target, ends)
    if len(gone):
        keep = np.ones(n, dtype=np.bool_)
        keep[gone] = False
        out = out[keep]
    run_doc = docs_of(starts, offsets)
    removed = np.bincount(run_doc, weights=ends - starts - target, minlength=n_docs)
    new_offsets = offsets - np.concatenate(([0], np.cumsum(removed.astype(np.int64))))
    changed = np.bincount(run_doc, minlength=n_docs) > 0
    return out, new_offsets, changed
