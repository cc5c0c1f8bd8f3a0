"""Gopher-style quality filters (Rae et al. 2021), vectorized over a whole batch.

Definitions (``words`` are the document's whitespace-separated tokens, exactly ``text.split()``;
lengths are in code points; a ratio whose denominator is 0 is 0):

* ``chars``: ``len(text)``; ``words``: ``len(words)``; mean word length: ``sum(len(w)) / words``.
* symbol/word ratio: ``(text.count("#") + text.count("...") + text.count("…")) / words``.
* alpha word ratio: share of words with at least one alphabetic character (``str.isalpha``).
* alnum char ratio: share of characters that are letters or digits (``str.isalnum``).
* duplicate line fraction: of the non-empty lines (``text.split("\\n")``), the share that repeat
  an earlier line of the document; the char fraction is their characters over ``len(text)``.
* top n-gram char fraction: ``count * chars`` of the most frequent word n-gram over the
  characters of all words, when that n-gram occurs more than once (ties: the longest);
  ``chars`` of an n-gram is the sum of its words' lengths.
* duplicate n-gram char fraction: characters of the words covered by any n-gram that occurs more
  than once (every occurrence, each word counted once) over the characters of all words.

How it is fast: documents are taken in slices of about ``SLICE_BYTES`` of text, and a slice's
UTF-8 bytes are one numpy array. Word boundaries come from a whitespace mask (``<= 0x20``,
corrected at the few control and non-ASCII positions); each word gets a 64-bit hash from its
first 16 bytes loaded as unaligned integers (longer words are dictionary-encoded by Arrow), and
n-gram hashes are rolled from the word hashes. Repeated n-grams are found by sorting, in chunks
of about 2**17 n-grams that never split a document, keys that pack a doc-salted hash's high bits
above the n-gram's index in the chunk: equal high bits are a repeated n-gram, and the low bits
say where its occurrences are (one value sort, several times faster than an argsort). Levels
are chained: an (n+1)-gram can only repeat where the n-grams at ``i`` and ``i + 1`` both repeat,
and a document whose duplicate fraction at some n is already at most every remaining threshold
is done (the covered set only shrinks as n grows), so the work falls off quickly after n = 2.
Rules run in config order on the documents still alive, the cheap ones first.

Exactness: lines and long words are compared exactly; n-grams by hash, so a count can be wrong
when two different n-grams of one chunk agree on the 47 compared bits: about once per 300
batches of 50 MB, and a false pair moves one document's fraction by at most ``2n`` words. The
tests check every measure against a plain-Python reference.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from datastore.errors import InvalidInput
from pipelines.config import FilterConfig
from pipelines.stages.base import Stage, StageOutput, drop_table
from pipelines.stages.normalize import (
    SLICE_BYTES,
    SPACE,
    char_classes,
    code_points,
    docs_of,
    slices,
    special_bytes,
    text_array,
    utf8_buffers,
)

__all__ = ["QualityFilter"]

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

_CHUNK = 1 << 17  # n-grams sorted together (1 MiB of keys: stays in cache)
_P = np.uint64(0xC2B2AE3D27D4EB4F)  # odd multiplier of the rolling n-gram hash
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_HIGH_BYTES = np.uint64(0x8080808080808080)
_LONELY = np.uint64(0xD6E8FEB86659FD93)  # salt of the hashes that must match nothing


class QualityFilter(Stage):
    """Drop documents that fail a Gopher quality or repetition rule of
    :class:`~pipelines.config.FilterConfig` (see the module doc for the exact measures).

    A dropped document's reason is ``filters:<rule>`` (``filters:top_ngram_char_fraction:3`` for
    the per-n rules) and its value the measurement that failed; n-gram rules run by increasing n.
    Counters: for every enabled rule, how many documents it dropped.
    """

    name = "filters"

    def __init__(self, config: FilterConfig) -> None:
        for key in ("top_ngram_char_fraction", "duplicate_ngram_char_fraction"):
            for n in getattr(config, key):
                if not isinstance(n, int) or n < 1:
                    raise InvalidInput(f"filters.{key}: n-gram size {n!r} must be an integer >= 1")
        self.config = config
        self._top = dict(sorted(config.top_ngram_char_fraction.items()))
        self._dup = dict(sorted(config.duplicate_ngram_char_fraction.items()))

    def rule_names(self) -> list[str]:
        """The enabled rules, in evaluation order (the counter keys)."""
        cfg = self.config
        names = [
            key
            for key in (
                "min_chars",
                "max_chars",
                "min_words",
                "max_words",
                "min_mean_word_length",
                "max_mean_word_length",
                "max_symbol_word_ratio",
                "min_alpha_word_ratio",
                "min_alnum_char_ratio",
                "max_duplicate_line_fraction",
                "max_duplicate_line_char_fraction",
            )
            if getattr(cfg, key) is not None
        ]
        names += [f"top_ngram_char_fraction:{n}" for n in self._top]
        names += [f"duplicate_ngram_char_fraction:{n}" for n in self._dup]
        return names

    def apply(self, table: pa.Table) -> StageOutput:
        """Evaluate the rules on one batch; keeps the survivors in input order."""
        cfg = self.config
        if not cfg.enabled or table.num_rows == 0:
            return StageOutput(table, counters={})
        text = text_array(table)
        verdict = _Verdict(len(text), self.rule_names())
        for lo, hi in slices(utf8_buffers(text)[1], SLICE_BYTES):
            self._evaluate(_Batch.of(text.slice(lo, hi - lo)), verdict.part(lo, hi))
        return verdict.output(table)

    def _evaluate(self, batch: _Batch, verdict: _Verdict) -> None:
        self._length_rules(batch, verdict)
        self._word_rules(batch, verdict)
        self._line_rules(batch, verdict)
        if self._top or self._dup:
            _ngram_rules(batch, verdict, self._top, self._dup)

    def _length_rules(self, batch: _Batch, verdict: _Verdict) -> None:
        cfg = self.config
        if cfg.min_chars is not None:
            verdict.check("min_chars", batch.chars, batch.chars < cfg.min_chars)
        if cfg.max_chars is not None:
            verdict.check("max_chars", batch.chars, batch.chars > cfg.max_chars)

    def _word_rules(self, batch: _Batch, verdict: _Verdict) -> None:
        cfg = self.config
        words = batch.words
        count = np.diff(words.first)
        if cfg.min_words is not None:
            verdict.check("min_words", count, count < cfg.min_words)
        if cfg.max_words is not None:
            verdict.check("max_words", count, count > cfg.max_words)
        if cfg.min_mean_word_length is not None or cfg.max_mean_word_length is not None:
            mean = _ratio(words.per_doc(words.cum_chars), count)
            if cfg.min_mean_word_length is not None:
                verdict.check("min_mean_word_length", mean, mean < cfg.min_mean_word_length)
            if cfg.max_mean_word_length is not None:
                verdict.check("max_mean_word_length", mean, mean > cfg.max_mean_word_length)
        if cfg.max_symbol_word_ratio is not None and verdict.any_alive():
            ratio = _ratio(_symbols(batch), count)
            verdict.check("max_symbol_word_ratio", ratio, ratio > cfg.max_symbol_word_ratio)
        if cfg.min_alpha_word_ratio is not None and verdict.any_alive():
            others = np.flatnonzero(~_alpha_words(batch))  # few: count those instead
            owner = np.searchsorted(words.first, others, side="right") - 1
            alpha = count - np.bincount(owner, minlength=batch.n_docs)
            ratio = _ratio(alpha, count)
            verdict.check("min_alpha_word_ratio", ratio, ratio < cfg.min_alpha_word_ratio)
        if cfg.min_alnum_char_ratio is not None and verdict.any_alive():
            ratio = _ratio(_alnum_chars(batch), batch.chars)
            verdict.check("min_alnum_char_ratio", ratio, ratio < cfg.min_alnum_char_ratio)

    def _line_rules(self, batch: _Batch, verdict: _Verdict) -> None:
        cfg = self.config
        line_max = cfg.max_duplicate_line_fraction
        char_max = cfg.max_duplicate_line_char_fraction
        if (line_max is None and char_max is None) or not verdict.any_alive():
            return
        fraction, char_fraction = _duplicate_lines(batch, verdict.alive)
        if line_max is not None:
            verdict.check("max_duplicate_line_fraction", fraction, fraction > line_max)
        if char_max is not None:
            name = "max_duplicate_line_char_fraction"
            verdict.check(name, char_fraction, char_fraction > char_max)


@dataclass
class _Verdict:
    """Which documents are still alive, and for the dropped ones the first failing rule."""

    n_docs: int
    names: list[str]
    alive: Bool = field(init=False)
    rule: npt.NDArray[np.int32] = field(init=False)
    value: F64 = field(init=False)

    def __post_init__(self) -> None:  # the arrays, written in place (see part())
        self.alive = np.ones(self.n_docs, dtype=np.bool_)
        self.rule = np.full(self.n_docs, -1, dtype=np.int32)
        self.value = np.zeros(self.n_docs, dtype=np.float64)

    def part(self, lo: int, hi: int) -> _Verdict:
        """A verdict over documents ``lo:hi`` that shares this one's arrays (numpy views)."""
        view = _Verdict(hi - lo, self.names)
        view.alive, view.rule, view.value = self.alive[lo:hi], self.rule[lo:hi], self.value[lo:hi]
        return view

    def any_alive(self) -> bool:
        return bool(self.alive.any())

    def check(self, name: str, values: npt.ArrayLike, fails: Bool) -> None:
        """Drop the alive documents where ``fails``, recording rule ``name`` and their value."""
        hit = fails & self.alive
        if hit.any():
            self.rule[hit] = self.names.index(name)
            self.value[hit] = np.asarray(values, dtype=np.float64)[hit]
            self.alive[hit] = False

    def output(self, table: pa.Table) -> StageOutput:
        rules = self.rule[self.rule >= 0]
        counts = np.bincount(rules, minlength=len(self.names))
        counters = {name: int(c) for name, c in zip(self.names, counts, strict=True)}
        if self.alive.all():
            return StageOutput(table, counters=counters)
        gone = ~self.alive
        ords = table.column("_ord").combine_chunks().filter(pa.array(gone))
        reasons = pa.array([f"filters:{name}" for name in self.names], pa.string())
        dropped = drop_table(ords, reasons.take(pa.array(rules)), self.value[gone])
        return StageOutput(table.filter(pa.array(self.alive)), dropped, counters)


@dataclass
class _Words:
    """The batch's words: byte ranges ``[starts, ends)`` in document order, the index of each
    document's first word (``first``, one more entry than documents) and cumulative lengths in
    characters."""

    starts: I64
    ends: I64
    first: I64
    cum_chars: I64  # cum_chars[i]: characters of words 0..i-1 (one more entry than words)

    def per_doc(self, cum: I64) -> I64:
        """Per-document sums from a cumulative per-word array like :attr:`cum_chars`."""
        return np.diff(cum[self.first])


@dataclass
class _Batch:
    """One batch's text as bytes, with the derived arrays computed once when first needed."""

    text: pa.Array
    data: U8
    offsets: I64
    special: I64  # positions of bytes < 0x20 or >= 0x7F
    _chars: I64 | None = None
    _words: _Words | None = None
    _hashes: U64 | None = None

    @classmethod
    def of(cls, text: pa.Array) -> _Batch:
        data, offsets = utf8_buffers(text)
        return cls(text, data, offsets, special_bytes(data))

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def continuations(self) -> I64:
        """Positions of UTF-8 continuation bytes (each is part of a multi-byte character)."""
        result: I64 = self.special[(self.data[self.special] & 0xC0) == 0x80]
        return result

    @property
    def chars(self) -> I64:
        """Code points per document."""
        if self._chars is None:
            per_doc = np.diff(np.searchsorted(self.continuations, self.offsets))
            self._chars = np.diff(self.offsets) - per_doc
        return self._chars

    @property
    def words(self) -> _Words:
        if self._words is None:
            self._words = _split_words(self.data, self.offsets, self.special, self.continuations)
        return self._words

    @property
    def word_hashes(self) -> U64:
        if self._hashes is None:
            self._hashes = _word_hashes(self.data, self.words)
        return self._hashes


def _ratio(num: npt.ArrayLike, den: npt.ArrayLike) -> F64:
    """``num / den`` elementwise, 0 where ``den`` is 0."""
    n = np.asarray(num, dtype=np.float64)
    d = np.asarray(den, dtype=np.float64)
    return np.divide(n, d, out=np.zeros_like(n), where=d != 0)


def _split_words(data: U8, offsets: I64, special: I64, continuations: I64) -> _Words:
    """Word boundaries of ``text.split()`` for every document, from the bytes."""
    n = len(data)
    ws = data <= 32
    value = data[special]
    low = value < 32
    not_space = (value < 9) | ((value > 13) & (value < 28))
    ws[special[low & not_space]] = False
    leads = special[value >= 0xC0]
    if len(leads):
        cps = code_points(data, leads)
        spaces = (char_classes()[cps] & SPACE) != 0
        lead, cp = leads[spaces], cps[spaces]
        ws[lead] = True
        ws[lead + 1] = True
        ws[lead[cp >= 0x800] + 2] = True
    body = np.zeros(n + 2, dtype=np.bool_)
    np.logical_not(ws, out=body[1:-1])
    edges = np.flatnonzero(body[1:] != body[:-1])  # word start, end, start, end...
    # A word never runs from one document into the next: split at document boundaries.
    inner = offsets[(offsets > 0) & (offsets < n)]
    split = np.unique(inner[body[inner] & body[inner + 1]])
    if len(split):
        edges = np.insert(edges, np.repeat(np.searchsorted(edges, split), 2), np.repeat(split, 2))
    bounds = edges.reshape(-1, 2)
    starts, ends = bounds[:, 0].copy(), bounds[:, 1].copy()
    first = np.searchsorted(starts, offsets).astype(np.int64)
    chars = ends - starts
    inside = continuations[~ws[continuations]] if len(continuations) else continuations
    if len(inside) and len(starts):
        if len(inside) < len(starts):
            owner = np.searchsorted(starts, inside, side="right") - 1
            np.subtract.at(chars, owner, 1)
        else:
            is_cont = ((data & 0xC0) == 0x80) & ~ws
            chars -= np.add.reduceat(is_cont, starts, dtype=np.int64)
    cum_chars = np.empty(len(chars) + 1, dtype=np.int64)
    cum_chars[0] = 0
    np.cumsum(chars, out=cum_chars[1:])
    return _Words(starts, ends, first, cum_chars)


def _load_u64(data: U8, positions: I64) -> U64:
    """The 8 bytes at each (sorted) position as a little-endian integer; past the end of the data
    the missing bytes read as 0 (callers mask them off anyway)."""
    n = len(data)
    out = np.zeros(len(positions), dtype=np.uint64)
    cut = int(np.searchsorted(positions, n - 7)) if n >= 8 else 0
    if cut:
        view = np.ndarray((n - 7,), dtype="<u8", buffer=data, offset=0, strides=(1,))
        out[:cut] = view[positions[:cut]]
    if cut < len(positions):
        tail_start = max(n - 8, 0)
        tail = np.zeros(24, dtype=np.uint8)
        tail[: n - tail_start] = data[tail_start:]
        tail_view = np.ndarray((17,), dtype="<u8", buffer=tail, offset=0, strides=(1,))
        out[cut:] = tail_view[positions[cut:] - tail_start]
    return out


def _keep_first_bytes(value: U64, length: I64) -> U64:
    """Zero all but the first ``length`` (at most 8) bytes of each little-endian ``value``, in
    place, moving the kept bytes to the top (the result still identifies them for a given
    length)."""
    shift = np.minimum(length, 8)
    shift *= -8
    shift += 64
    value <<= shift.view(np.uint64)
    return value


def _word_array(data: U8, starts: I64, ends: I64) -> pa.Array:
    """The given words (byte ranges, increasing) as an Arrow ``large_string`` array."""
    m = len(starts)
    if m == 0:
        return pa.array([], pa.large_string())
    bounds = np.empty(2 * m, dtype=np.int64)
    bounds[0::2], bounds[1::2] = starts, ends
    # Elements alternate word, gap, word...; the buffers are shared, ``take`` copies the words.
    interleaved = pa.Array.from_buffers(
        pa.large_string(), 2 * m - 1, [None, pa.py_buffer(bounds), pa.py_buffer(data)]
    )
    return interleaved.take(pa.array(np.arange(0, 2 * m - 1, 2)))


def _mix(x: U64) -> U64:
    """murmur3's 64-bit finalizer, in place: every output bit depends on every input bit."""
    t = x >> np.uint64(33)
    x ^= t
    x *= np.uint64(0xFF51AFD7ED558CCD)
    np.right_shift(x, np.uint64(33), out=t)
    x ^= t
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    np.right_shift(x, np.uint64(33), out=t)
    x ^= t
    return x


def _word_hashes(data: U8, words: _Words) -> U64:
    """A 64-bit hash of each word, equal for equal words: of the word's bytes themselves up to
    16 bytes, of an Arrow dictionary id (exact within the batch) beyond.

    The final mix matters: n-gram hashes are ``sum(hash * P**k)`` and only their high bits are
    compared, and a multiplication carries differences upwards only; words whose codes differed
    in a few high bits (one-letter words) would collide as n-grams without it."""
    starts, lengths = words.starts, words.ends - words.starts
    h = _keep_first_bytes(_load_u64(data, starts), lengths)
    h ^= lengths.view(np.uint64)
    mid = np.flatnonzero(lengths > 8)
    if len(mid):
        second = _keep_first_bytes(_load_u64(data, starts[mid] + 8), lengths[mid] - 8)
        h[mid] = _mix(h[mid]) ^ second
    long = np.flatnonzero(lengths > 16)
    if len(long):
        words_arr = _word_array(data, starts[long], words.ends[long])
        ids = pc.dictionary_encode(words_arr).indices.to_numpy().astype(np.uint64)
        h[long] = (ids + np.uint64(1)) * _GOLDEN ^ _LONELY
    return _mix(h)


def _symbols(batch: _Batch) -> I64:
    """``text.count("#") + text.count("...") + text.count("…")`` per document, from the bytes
    (a run of k dots holds k // 3 non-overlapping "...")."""
    data, offsets, n_docs = batch.data, batch.offsets, batch.n_docs
    marks = np.flatnonzero((data == 35) | (data == 46))
    value = data[marks]
    hashes, dots = marks[value == 35], marks[value == 46]
    count = np.bincount(docs_of(hashes, offsets), minlength=n_docs)
    if len(dots):
        doc = docs_of(dots, offsets)
        cut = np.flatnonzero((dots[1:] != dots[:-1] + 1) | (doc[1:] != doc[:-1])) + 1
        run_starts = np.concatenate(([0], cut))
        run_lengths = np.diff(np.concatenate((run_starts, [len(dots)])))
        count += np.bincount(doc[run_starts], run_lengths // 3, n_docs).astype(np.int64)
    special = batch.special
    e2 = special[data[special] == 0xE2]
    last = len(data) - 1
    ellipsis = e2[
        (data[np.minimum(e2 + 1, last)] == 0x80) & (data[np.minimum(e2 + 2, last)] == 0xA6)
    ]
    count += np.bincount(docs_of(ellipsis, offsets), minlength=n_docs)
    return count


def _alpha_words(batch: _Batch) -> Bool:
    """Whether each word has an alphabetic character (``any(c.isalpha() for c in word)``).

    Most words start with an ASCII letter (one byte gather); the rest get their first 8 bytes
    tested for an ASCII letter at once (SWAR); only words still undecided that have non-ASCII
    bytes or more than 8 bytes go to RE2's ``\\pL``."""
    data, words = batch.data, batch.words
    first = data[words.starts]
    alpha: Bool = ((first | np.uint8(32)) - np.uint8(97)) < np.uint8(26)
    rest = np.flatnonzero(~alpha)
    if len(rest) == 0:
        return alpha
    lengths = words.ends[rest] - words.starts[rest]
    v = _keep_first_bytes(_load_u64(data, words.starts[rest]), lengths)
    lower = (v & np.uint64(0x7F7F7F7F7F7F7F7F)) | np.uint64(0x2020202020202020)
    at_least_a = lower + np.uint64(0x1F1F1F1F1F1F1F1F)  # high bit set where byte >= 'a'
    above_z = lower + np.uint64(0x0505050505050505)  # high bit set where byte > 'z'
    letters = at_least_a & ~above_z & ~v & _HIGH_BYTES
    found = letters != 0
    alpha[rest[found]] = True
    unsure = rest[~found & ((lengths > 8) | ((v & _HIGH_BYTES) != 0))]
    if len(unsure):
        arr = _word_array(data, words.starts[unsure], words.ends[unsure])
        alpha[unsure] = pc.match_substring_regex(arr, r"\pL").to_numpy(zero_copy_only=False)
    return alpha


def _alnum_chars(batch: _Batch) -> I64:
    """Letters and digits per document (``sum(c.isalnum() for c in text)``): counted on the
    bytes for ASCII documents, with RE2 ``[\\pL\\pN]`` for the others."""
    data, offsets = batch.data, batch.offsets
    counts = np.zeros(batch.n_docs, dtype=np.int64)
    nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
    if len(nonempty) == 0:
        return counts
    letter = ((data | np.uint8(32)) - np.uint8(97)) < np.uint8(26)
    digit = (data - np.uint8(48)) < np.uint8(10)
    counts[nonempty] = np.add.reduceat(letter | digit, offsets[nonempty], dtype=np.int64)
    non_ascii = np.unique(docs_of(batch.special[batch.data[batch.special] >= 0x80], offsets))
    if len(non_ascii):
        sub = batch.text.take(pa.array(non_ascii))
        regex = pc.count_substring_regex(sub, r"[\pL\pN]")
        counts[non_ascii] = regex.to_numpy(zero_copy_only=False)
    return counts


def _run_lengths(sorted_keys: npt.NDArray[np.integer]) -> tuple[I64, I64]:
    """Start index and length of each run of equal values in a sorted array."""
    k = len(sorted_keys)
    starts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate(([0], starts)).astype(np.int64)
    return starts, np.diff(np.concatenate((starts, [k])))


def _duplicate_lines(batch: _Batch, alive: Bool) -> tuple[F64, F64]:
    """Per document: the share of non-empty lines that repeat an earlier one, and their
    characters over the document's.

    Lines are byte ranges between newlines and document ends; Arrow dictionary-encodes them in
    place (an array whose elements alternate line, gap, line... over the batch's own bytes), so
    identity is exact and no text is copied."""
    data, offsets, n_docs = batch.data, batch.offsets, batch.n_docs
    fraction, char_fraction = np.zeros(n_docs), np.zeros(n_docs)
    newlines = batch.special[data[batch.special] == 10]
    per_doc = np.diff(np.searchsorted(newlines, offsets)) + 1  # lines per document
    # line ends in order: a document's newlines, then its end
    doc_ends_at = np.cumsum(per_doc) - 1
    ends = np.empty(int(per_doc.sum()), dtype=np.int64)
    is_newline = np.ones(len(ends), dtype=np.bool_)
    is_newline[doc_ends_at] = False
    ends[is_newline] = newlines
    ends[doc_ends_at] = offsets[1:]
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + is_newline[:-1]
    line_doc = np.repeat(np.arange(n_docs, dtype=np.int64), per_doc)
    keep = (ends > starts) & alive[line_doc]
    starts, ends, line_doc = starts[keep], ends[keep], line_doc[keep]
    n_lines = np.bincount(line_doc, minlength=n_docs)
    if len(starts) == 0:
        return fraction, char_fraction
    bounds = np.empty(2 * len(starts), dtype=np.int64)
    bounds[0::2], bounds[1::2] = starts, ends
    interleaved = pa.Array.from_buffers(
        pa.large_string(), len(bounds) - 1, [None, pa.py_buffer(bounds), pa.py_buffer(data)]
    )
    encoded = pc.dictionary_encode(interleaved)
    ids = encoded.indices.to_numpy()[0::2].astype(np.int64)
    line_chars = pc.utf8_length(encoded.dictionary).to_numpy().astype(np.int64)
    keys = (line_doc << 32) | ids
    keys.sort()
    run_starts, counts = _run_lengths(keys)
    repeated = counts > 1
    group = keys[run_starts[repeated]]
    extra = (counts[repeated] - 1).astype(np.float64)
    doc, line = group >> 32, group & 0xFFFFFFFF
    dup = np.bincount(doc, weights=extra, minlength=n_docs)
    dup_chars = np.bincount(doc, weights=extra * line_chars[line], minlength=n_docs)
    return _ratio(dup, n_lines), _ratio(dup_chars, batch.chars)


def _repeats(hashes: U64, doc: I64, runs: bool) -> tuple[Bool, I64, I64]:
    """Which n-grams (by hash; ``doc`` non-decreasing) occur more than once in their document.

    With ``runs``, also one member (index) and the count of every repeated n-gram.

    Sorts slices of about ``_CHUNK`` n-grams that never split a document; a slice's keys are the
    doc-salted hash with its low bits replaced by the n-gram's index in the slice, so one value
    sort (much faster than an argsort) yields both the groups and where their members are."""
    m = len(hashes)
    rep = np.zeros(m, dtype=np.bool_)
    firsts: list[I64] = []
    lengths: list[I64] = []
    if m < 2:
        return rep, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    keys = doc.view(np.uint64) * _GOLDEN
    keys += hashes
    if m > _CHUNK:
        doc_starts = np.flatnonzero(doc[1:] != doc[:-1]) + 1
        wanted = np.arange(_CHUNK, m, _CHUNK)
        at = np.searchsorted(doc_starts, wanted, side="right") - 1
        bounds = np.unique(np.concatenate(([0], doc_starts[at[at >= 0]], [m]))).tolist()
    else:
        bounds = [0, m]
    iota = np.arange(max(b - a for a, b in itertools.pairwise(bounds)), dtype=np.uint64)
    for a, b in itertools.pairwise(bounds):
        k = b - a
        if k < 2:
            continue
        bits = np.uint64((k - 1).bit_length())
        low = np.uint64((1 << int(bits)) - 1)
        packed = keys[a:b] & ~low
        packed |= iota[:k]
        packed.sort()
        top = packed >> bits
        same = top[1:] == top[:-1]
        if not same.any():
            continue
        member = np.zeros(k, dtype=np.bool_)
        member[1:] = same
        member[:-1] |= same
        where = (packed[member] & low).view(np.int64)
        rep[a + where] = True
        if runs:
            run_starts, run_lengths = _run_lengths(top[member])
            firsts.append(a + where[run_starts])
            lengths.append(run_lengths)
    if not firsts:
        return rep, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return rep, np.concatenate(firsts), np.concatenate(lengths)


def _ngram_rules(
    batch: _Batch, verdict: _Verdict, top: dict[int, float], dup: dict[int, float]
) -> None:
    """Evaluate the top and duplicate n-gram rules by increasing n (see the module doc)."""
    pending: list[tuple[str, F64, float]] = []
    last = _ngram_levels(batch, verdict, top, dup, pending)
    # Past the last level computed no document has a repeated n-gram left (or it was shown to
    # pass every remaining rule): the remaining rules measure 0. Config order: all the top
    # n-gram rules come before the duplicate n-gram rules.
    zero = np.zeros(batch.n_docs)
    for n, limit in top.items():
        if n > last:
            verdict.check(f"top_ngram_char_fraction:{n}", zero, zero > limit)
    for name, value, limit in pending:
        verdict.check(name, value, value > limit)
    for n, limit in dup.items():
        if n > last:
            verdict.check(f"duplicate_ngram_char_fraction:{n}", zero, zero > limit)


def _ngram_levels(
    batch: _Batch,
    verdict: _Verdict,
    top: dict[int, float],
    dup: dict[int, float],
    pending: list[tuple[str, F64, float]],
) -> int:
    """The level loop of :func:`_ngram_rules`; returns the last n it measured. Duplicate n-gram
    results measured while top n-gram rules of larger n remain go to ``pending`` (checked after
    those, in config order)."""
    lo, hi = min([*top, *dup]), max([*top, *dup])
    words = batch.words
    n_docs, n_words = batch.n_docs, len(words.starts)
    m = n_words - lo + 1
    if m <= 0 or not verdict.any_alive():
        return lo - 1
    hashes = batch.word_hashes
    word_doc = np.repeat(np.arange(n_docs, dtype=np.int64), np.diff(words.first))
    doc_end = words.first[1:]
    cum_chars = words.cum_chars
    total = words.per_doc(cum_chars)

    # level lo: every window of lo words inside one document
    h = hashes[:m].copy()
    for k in range(1, lo):
        h *= _P
        h += hashes[k : k + m]
    if np.count_nonzero(verdict.alive) >= 0.8 * n_docs:
        # Keep every window (documents already dropped cost little and are never checked);
        # the few that cross into the next document get a hash of their own instead of being
        # filtered out, which would copy everything.
        cand, cdoc = np.arange(m, dtype=np.int64), word_doc[:m]
        crossing = (words.first[1:, None] - np.arange(1, lo)).ravel()
        crossing = crossing[(crossing >= 0) & (crossing < m)]
        h[crossing] = (crossing.view(np.uint64) + np.uint64(1)) * _GOLDEN ^ _LONELY
    else:
        valid = word_doc[:m] == word_doc[lo - 1 :]
        valid &= np.repeat(verdict.alive, np.diff(words.first))[:m]
        cand = np.flatnonzero(valid)
        h, cdoc = h[valid], word_doc[:m][valid]
    bound = np.full(n_docs, np.inf)  # duplicate fraction at the last level: only shrinks with n
    for n in range(lo, hi + 1):
        rep, first, count = _repeats(h, cdoc, n in top)
        if n in top:
            # per document, the most frequent n-gram (ties: the longest) by count << 32 | chars
            where = cand[first]
            score = (count << 32) | (cum_chars[where + n] - cum_chars[where])
            best = np.zeros(n_docs, dtype=np.int64)
            np.maximum.at(best, cdoc[first], score)
            value = _ratio((best >> 32) * (best & 0xFFFFFFFF), total)
            verdict.check(f"top_ngram_char_fraction:{n}", value, value > top[n])
        pos, pdoc = cand[rep], cdoc[rep]
        if n in dup:
            covered: F64 = np.zeros(n_docs)
            if len(pos):
                nxt = np.concatenate((pos[1:], [pos[-1] + n]))
                end = np.minimum(pos + n, nxt)  # overlapping n-grams: count each word once
                chars = (cum_chars[end] - cum_chars[pos]).astype(np.float64)
                covered = np.bincount(pdoc, chars, n_docs).astype(np.float64, copy=False)
            value = _ratio(covered, total)
            pending.append((f"duplicate_ngram_char_fraction:{n}", value, dup[n]))
            if not any(m > n for m in top):
                for name, measured, limit in pending:
                    verdict.check(name, measured, measured > limit)
                pending.clear()
            bound = np.minimum(bound, value)
        if n == hi or len(pos) == 0:
            return n
        keep_doc = verdict.alive
        if not any(m > n for m in top):
            keep_doc = keep_doc & (bound > min(t for m, t in dup.items() if m > n))
        # an (n+1)-gram at i repeats only if the n-grams at i and i + 1 both repeat
        succ = np.concatenate((pos[1:] == pos[:-1] + 1, [False]))
        ok = succ & (pos + n + 1 <= doc_end[pdoc]) & keep_doc[pdoc]
        cand, cdoc = pos[ok], pdoc[ok]
        if len(cand) == 0:
            return n
        h = h[rep][ok]
        h *= _P
        h += hashes[cand + n]
    return hi
