"""The pure building blocks of exact and fuzzy dedup, against pure-Python references.

The references here re-implement the documented definitions (``pipelines.stages.minhash``'s
module docstring) with Python ints and sets, without calling the code under test, so a change
of any hash, of the tokenizer or of the permutations shows up as a failure.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import subprocess
import sys
import textwrap
import unicodedata
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.stages import oph
from pipelines.stages.dedup import (
    band_keys,
    collision_probability,
    connected_components,
    duplicate_edges,
    empty_signatures,
    jaccard,
    lsh_threshold,
    minhash_signatures,
    pairwise_jaccard,
    shingle_hashes,
    text_hashes,
    unique_shingles,
)
from pipelines.stages.minhash import Algorithm

M64 = 0xFFFFFFFFFFFFFFFF
K = 0x9E3779B97F4A7C15
REPO = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=60, deadline=None)
ALGORITHMS: list[Algorithm] = ["minhash", "oph"]

# --------------------------------------------------------------------------- references


def ref_mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def ref_multipliers(count: int) -> list[int]:
    state, out = 0x5348494E474C45, []
    for _ in range(count):
        state = (state + K) & M64
        out.append(ref_mix(state) | 1)
    return out


def ref_words(text: str | None) -> list[bytes]:
    lowered = pc.utf8_lower(pa.array([text or ""]))[0].as_py()
    words, current = [], []
    for ch in lowered:
        if unicodedata.category(ch)[0] in "LMN":
            current.append(ch)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return [w.encode() for w in words]


def ref_word_hash(word: bytes) -> int:
    if len(word) > 32:
        return xxhash.xxh3_64_intdigest(word)
    blocks = [
        int.from_bytes(word[i : i + 8].ljust(8, b"\0"), "little") for i in range(0, len(word), 8)
    ]
    h = ref_mix(blocks[0] ^ (len(word) * K & M64))
    for block in blocks[1:]:
        h = ref_mix(h ^ block)
    return h


def ref_shingles(text: str | None, ngram: int) -> list[int]:
    words = [ref_word_hash(w) for w in ref_words(text)]
    mult = ref_multipliers(ngram)

    def one(ws: list[int]) -> int:
        acc = sum(w * m for w, m in zip(ws, mult, strict=False)) & M64
        return ref_mix(acc ^ (len(ws) * K & M64))

    if not words:
        return []
    if len(words) < ngram:
        return [one(words)]
    return [one(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]


def ref_signature(shingles: list[int], num_perm: int, seed: int) -> list[int]:
    raw = [int(x) for x in np.random.PCG64(seed).random_raw(2 * num_perm)]
    if not shingles:
        return [0xFFFFFFFF] * num_perm
    return [
        min((((raw[2 * i] | 1) * x + raw[2 * i + 1]) & M64) >> 32 for x in shingles)
        for i in range(num_perm)
    ]


@functools.cache
def ref_bin_orders(k: int, c: int) -> list[list[int]]:
    """Each bin's order of the bins: itself, then the others by increasing priority."""
    return [
        [i, *sorted((j for j in range(k) if j != i), key=lambda j: ref_mix(c ^ (i << 32 | j)))]
        for i in range(k)
    ]


def ref_oph(shingles: list[int], k: int, seed: int) -> list[int]:
    raw = np.random.PCG64(np.random.SeedSequence([seed, 0x4F5048])).random_raw(3)
    a, b, c = int(raw[0]) | 1, int(raw[1]), int(raw[2])
    if not shingles:
        return [0xFFFFFFFF] * k
    bins: dict[int, int] = {}
    for x in shingles:
        h = ref_mix((a * x + b) & M64)
        i = (h >> 32) * k >> 32
        bins[i] = min(bins.get(i, 1 << 32), h & 0xFFFFFFFF)
    return [next(bins[j] for j in order if j in bins) for order in ref_bin_orders(k, c)]


def ref_signatures(
    shingles: list[int], num_perm: int, seed: int, algorithm: Algorithm
) -> list[int]:
    if algorithm == "oph":
        return ref_oph(shingles, num_perm, seed)
    return ref_signature(shingles, num_perm, seed)


def flat(docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(docs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(d) for d in docs])
    values = np.array([x for d in docs for x in d], dtype=np.uint64)
    return values, offsets


def segments(hashes: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [hashes[a:b].tolist() for a, b in itertools.pairwise(offsets)]


# --------------------------------------------------------------------------- texts

TEXTS = [
    "Hello, World! hello   world",
    "",
    None,
    "a b",
    "!!! ... ---",
    "Ünïcode ÄÖÜ straße — “quoted” 北京欢迎你 नमस्ते दुनिया 123abc ﬁne İstanbul",
    "x" * 100 + " y " + "z" * 33 + " " + "w" * 32 + " " + "v" * 17,
    "one two three four five six seven eight",
    "emoji🙂between😀words and\ttabs\nnew lines_underscores",
]

words_text = st.lists(
    st.sampled_from([*"ab cD,.\n-_éÉ߀😀北नम्\u0301", "xyz", " the ", "longerthaneightbytes"]),
    max_size=30,
).map("".join)


def test_text_hashes_are_xxh3_128_of_utf8() -> None:
    hi, lo = text_hashes(pa.array(TEXTS))
    assert hi.dtype == lo.dtype == np.uint64
    for text, h, low in zip(TEXTS, hi.tolist(), lo.tolist(), strict=True):
        assert h << 64 | low == xxhash.xxh3_128_intdigest((text or "").encode())


def test_text_hashes_of_slices_chunks_and_large_strings() -> None:
    whole = text_hashes(pa.array(TEXTS))
    sliced = text_hashes(pa.array(TEXTS).slice(3, 4))
    assert all((w[3:7] == s).all() for w, s in zip(whole, sliced, strict=True))
    chunked = pa.chunked_array(
        [pa.array(TEXTS[:4]), pa.array([], pa.string()), pa.array(TEXTS[4:])]
    )
    large = pa.array(TEXTS, pa.large_string())
    for other in (text_hashes(chunked), text_hashes(large)):
        assert all((w == o).all() for w, o in zip(whole, other, strict=True))
    empty = text_hashes(pa.array([], pa.string()))
    assert empty[0].size == empty[1].size == 0
    with pytest.raises(TypeError):
        text_hashes(pa.array([1, 2]))


@pytest.mark.parametrize("ngram", [1, 3, 5])
def test_shingles_follow_the_documented_definition(ngram: int) -> None:
    hashes, offsets = shingle_hashes(pa.array(TEXTS), ngram)
    assert hashes.dtype == np.uint64 and offsets.dtype == np.int64
    assert segments(hashes, offsets) == [ref_shingles(t, ngram) for t in TEXTS]


@SETTINGS
@given(texts=st.lists(st.one_of(st.none(), words_text), max_size=12), ngram=st.integers(1, 4))
def test_shingles_match_reference_on_generated_texts(texts: list[str | None], ngram: int) -> None:
    hashes, offsets = shingle_hashes(pa.array(texts, pa.string()), ngram)
    assert segments(hashes, offsets) == [ref_shingles(t, ngram) for t in texts]


@SETTINGS
@given(texts=st.lists(words_text, min_size=1, max_size=12), cut=st.integers(0, 12))
def test_shingles_do_not_depend_on_batching(texts: list[str], cut: int) -> None:
    """Groups, chunks, slices and offset widths change nothing (no word spans documents)."""
    whole = shingle_hashes(pa.array(texts), 2)
    cut = min(cut, len(texts))
    parts = [texts[:cut], [], texts[cut:]]
    variants = [
        shingle_hashes(pa.array(texts), 2, group_bytes=1),
        shingle_hashes(pa.chunked_array([pa.array(part, pa.string()) for part in parts]), 2),
        shingle_hashes(pa.array(texts, pa.large_string()), 2),
        shingle_hashes(pa.array(["pad words here", *texts]).slice(1), 2),
    ]
    for hashes, offsets in variants:
        assert (hashes == whole[0]).all() and (offsets == whole[1]).all()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_short_and_empty_documents(algorithm: Algorithm) -> None:
    texts = ["", "   ", "!!! ...", "one", "a b", "b a", "A, B!", "a b c d e", "a b c d e f"]
    hashes, offsets = shingle_hashes(pa.array(texts), 5)
    assert np.diff(offsets).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2]
    sig = minhash_signatures(hashes, offsets, 16, 1, algorithm=algorithm)
    assert empty_signatures(sig).tolist() == [True] * 3 + [False] * 6
    assert (sig[:3] == 0xFFFFFFFF).all()
    assert (sig[4] == sig[6]).all()  # case and punctuation do not matter
    assert not (sig[4] == sig[5]).all()  # word order does
    assert not (sig[4] == sig[7]).all()  # a short doc is not a prefix n-gram of a longer one


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("num_perm", [1, 24])
def test_signatures_follow_the_documented_definition(algorithm: Algorithm, num_perm: int) -> None:
    hashes, offsets = shingle_hashes(pa.array(TEXTS), 2)
    sig = minhash_signatures(hashes, offsets, num_perm, 7, algorithm=algorithm)
    assert sig.dtype == np.uint32 and sig.shape == (len(TEXTS), num_perm)
    expected = [ref_signatures(ref_shingles(t, 2), num_perm, 7, algorithm) for t in TEXTS]
    assert sig.tolist() == expected
    other_seed = minhash_signatures(hashes, offsets, num_perm, 8, algorithm=algorithm)
    assert not (other_seed == sig)[~empty_signatures(sig)].all()


@SETTINGS
@given(
    docs=st.lists(st.lists(st.integers(0, M64), max_size=40), max_size=12),
    rows=st.integers(1, 50),
    num_perm=st.integers(1, 20),
)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_chunking_gives_the_same_signatures(
    algorithm: Algorithm, docs: list[list[int]], rows: int, num_perm: int
) -> None:
    def sig(chunk_bytes: int) -> np.ndarray:
        return minhash_signatures(
            hashes,
            offsets,
            num_perm,
            3,
            algorithm=algorithm,
            chunk_bytes=chunk_bytes,
        )

    hashes, offsets = flat(docs)
    one_chunk = sig(1 << 30)
    assert (one_chunk == sig(8 * num_perm * rows)).all()
    assert (one_chunk == sig(8 * rows)).all()
    assert (one_chunk == sig(1)).all()
    assert one_chunk.tolist() == [ref_signatures(d, num_perm, 3, algorithm) for d in docs]


@pytest.mark.parametrize("num_perm", [2, 64, 300])
def test_oph_densification_ways_agree(num_perm: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty bins are filled by comparing ranks (few non-empty bins), by probing (many) and
    by comparing ranks after the probes: however the work is split, the result is the same.
    300 bins use 2-byte order tables."""
    rng = np.random.default_rng(num_perm)
    sizes = [0, 1, 2, 3, 5, 8, 12, 20, 40, 80, 150, 400, 1500, 0]
    docs = [rng.integers(0, 2**63, size=int(n)).tolist() for n in sizes]
    hashes, offsets = flat(docs)
    results = []
    for probes, small in [(32, 3.0), (0, 0.0), (0, 1e9), (1, 0.0), (1000, 0.0), (4, 1.0)]:
        monkeypatch.setattr(oph, "_PROBES", probes)
        monkeypatch.setattr(oph, "_SMALL", small)
        results.append(oph.oph_signatures(hashes, offsets, num_perm, 5))
    assert all((r == results[0]).all() for r in results)
    assert results[0].tolist() == [ref_oph(d, num_perm, 5) for d in docs]


def test_longer_signatures_extend_shorter_ones() -> None:
    hashes, offsets = shingle_hashes(pa.array(TEXTS), 3)
    short = minhash_signatures(hashes, offsets, 40, 11)
    long = minhash_signatures(hashes, offsets, 130, 11)
    assert (long[:, :40] == short).all()
    assert not (minhash_signatures(hashes, offsets, 40, 12) == short).all()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_signature_input_validation(algorithm: Algorithm) -> None:
    def sig(hashes: np.ndarray, offsets: np.ndarray, num_perm: int) -> np.ndarray:
        return minhash_signatures(hashes, offsets, num_perm, 1, algorithm=algorithm)

    hashes, offsets = flat([[1, 2], [3]])
    with pytest.raises(ValueError):
        sig(hashes, offsets, 0)
    with pytest.raises(ValueError):
        sig(hashes, offsets[:-1], 8)
    with pytest.raises(ValueError):
        sig(hashes, np.array([0, 2, 1, 3]), 8)
    assert sig(np.zeros(0, np.uint64), np.zeros(1, np.int64), 8).shape == (0, 8)
    assert (sig(np.zeros(0, np.uint64), np.zeros(3, np.int64), 8) == 0xFFFFFFFF).all()
    with pytest.raises(ValueError, match="unknown signature algorithm 'lsh'"):
        minhash_signatures(hashes, offsets, 8, 1, algorithm="lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_perm must be in"):
        minhash_signatures(hashes, offsets, oph.MAX_BINS + 1, 1, algorithm="oph")


def _pair_with_jaccard(
    rng: np.random.Generator, j: float, union: int
) -> tuple[list[int], list[int]]:
    values = rng.integers(0, 2**64, size=union, dtype=np.uint64, endpoint=False).tolist()
    common = round(j * union)
    only_a = (union - common) // 2
    return values[: common + only_a], values[:common] + values[common + only_a :]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("union", [20, 40, 400])
@pytest.mark.parametrize("j", [0.2, 0.5, 0.8, 0.95])
def test_agreement_estimates_jaccard(j: float, union: int, algorithm: Algorithm) -> None:
    """The fraction of equal signature values is an unbiased estimate of Jaccard similarity:
    the mean over 50 pairs must be within 0.025 (about 4 standard errors at num_perm=128), and
    its spread close to MinHash's binomial one. Sets of 10 to 40 shingles leave most OPH bins
    empty, so there the estimate rests on densification."""
    rng = np.random.default_rng(int(j * 100) + union)
    docs = []
    for _ in range(50):
        a, b = _pair_with_jaccard(rng, j, union)
        assert len(set(a) & set(b)) / len(set(a) | set(b)) == pytest.approx(j, abs=0.003)
        docs += [a, b]
    sig = minhash_signatures(*flat(docs), 128, 1, algorithm=algorithm)
    agreement = (sig[0::2] == sig[1::2]).mean(axis=1)
    assert abs(agreement.mean() - j) < 0.025
    assert np.abs(agreement - j).max() < 0.2  # each pair within ~5 standard errors
    binomial_sd = np.sqrt(j * (1 - j) / 128)
    assert np.sqrt(np.mean((agreement - j) ** 2)) < 1.5 * binomial_sd


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("union", [20, 400])
@pytest.mark.parametrize("j", [0.5, 0.7])
def test_band_collisions_follow_the_s_curve(j: float, union: int, algorithm: Algorithm) -> None:
    """Pairs of Jaccard ``j`` share a band key (20 bands of 6 rows) about as often as
    :func:`collision_probability` says (4 standard errors over 400 pairs): positions of a
    small set's OPH signature copy the same few bins, yet bands stay nearly independent."""
    rng = np.random.default_rng(union + int(j * 10))
    docs = []
    for _ in range(400):
        docs += _pair_with_jaccard(rng, j, union)
    sig = minhash_signatures(*flat(docs), 120, 1, algorithm=algorithm)
    keys = band_keys(sig, 20, 6)
    rate = (keys[0::2] == keys[1::2]).any(axis=1).mean()
    p = collision_probability(j, 20, 6)
    assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / 400)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_agreement_estimates_jaccard_of_texts(algorithm: Algorithm) -> None:
    """Edited copies of texts: the signature estimate tracks the true shingle Jaccard."""
    rng = np.random.default_rng(5)
    vocab = [f"w{i}" for i in range(3000)]
    texts = []
    for _ in range(40):
        words = rng.choice(vocab, size=300).tolist()
        edited = list(words)
        for pos in rng.choice(300, size=int(rng.integers(0, 30)), replace=False):
            edited[pos] = "changed"
        texts += [" ".join(words), " ".join(edited)]
    hashes, offsets = shingle_hashes(pa.array(texts), 5)
    sig = minhash_signatures(hashes, offsets, 128, 1, algorithm=algorithm)
    left, right = np.arange(0, 80, 2), np.arange(1, 80, 2)
    true = pairwise_jaccard(hashes, offsets, left, right)
    estimate = (sig[left] == sig[right]).mean(axis=1)
    assert true.min() < 0.5 < 0.95 < true.max()
    assert abs((estimate - true).mean()) < 0.03
    assert np.abs(estimate - true).max() < 0.2


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_identical_texts_have_identical_signatures_and_band_keys(algorithm: Algorithm) -> None:
    texts = [TEXTS[5], TEXTS[7], TEXTS[5], TEXTS[7] + "!", TEXTS[7].upper(), "other words entirely"]
    hashes, offsets = shingle_hashes(pa.array(texts), 5)
    sig = minhash_signatures(hashes, offsets, 120, 1, algorithm=algorithm)
    keys = band_keys(sig, 20, 6)
    assert keys.shape == (6, 20) and keys.dtype == np.uint64
    for a, b in [(0, 2), (1, 3), (1, 4)]:
        assert (sig[a] == sig[b]).all() and (keys[a] == keys[b]).all()
    assert not (keys[0] == keys[1]).any() and not (keys[1] == keys[5]).any()


def test_band_keys_compare_bands() -> None:
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**32, size=(3, 12), dtype=np.uint32)
    sig[1, :4] = sig[0, :4]  # band 0 of (bands=3, rows=4) equal
    sig[2, 4:8] = sig[0, 4:8]  # band 1
    sig[2, 8:12] = sig[0, 4:8]  # band 2 holds band 1's values: must not match band 1
    keys = band_keys(sig, 3, 4)
    assert (keys[0] == keys[1]).tolist() == [True, False, False]
    assert (keys[0] == keys[2]).tolist() == [False, True, False]
    assert keys[2, 2] != keys[0, 1]  # the band index is part of the key
    assert (band_keys(np.hstack([sig, sig]), 3, 4) == keys).all()  # only the first 12 used
    with pytest.raises(ValueError, match="num_perm >= 15"):
        band_keys(sig, 3, 5)


def test_lsh_helpers() -> None:
    assert lsh_threshold(20, 6) == pytest.approx((1 / 20) ** (1 / 6))
    assert collision_probability(1.0, 20, 6) == 1.0
    assert collision_probability(0.0, 20, 6) == 0.0
    t = lsh_threshold(20, 6)
    assert collision_probability(t, 20, 6) == pytest.approx(1 - (1 - 1 / 20) ** 20)
    assert collision_probability(0.9, 20, 6) > 0.99 > 0.1 > collision_probability(0.3, 20, 6)


def test_results_do_not_depend_on_the_process() -> None:
    """Two interpreters with different hash seeds give the same bytes as this one."""
    script = textwrap.dedent(
        f"""
        import hashlib, pyarrow as pa
        from pipelines.stages.dedup import band_keys, minhash_signatures, shingle_hashes
        from pipelines.stages.dedup import text_hashes
        texts = pa.array({TEXTS!r})
        h, o = shingle_hashes(texts, 3)
        sig = minhash_signatures(h, o, 60, 42)
        oph = minhash_signatures(h, o, 60, 42, algorithm="oph")
        parts = [*text_hashes(texts), h, o, sig, band_keys(sig, 10, 6), oph]
        print(hashlib.sha256(b"".join(p.tobytes() for p in parts)).hexdigest())
        """
    )
    digests = set()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        run = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        digests.add(run.stdout.strip())
    texts = pa.array(TEXTS)
    h, o = shingle_hashes(texts, 3)
    sig = minhash_signatures(h, o, 60, 42)
    oph_sig = minhash_signatures(h, o, 60, 42, algorithm="oph")
    parts = [*text_hashes(texts), h, o, sig, band_keys(sig, 10, 6), oph_sig]
    digests.add(hashlib.sha256(b"".join(p.tobytes() for p in parts)).hexdigest())
    assert len(digests) == 1


# --------------------------------------------------------------------------- Jaccard


@SETTINGS
@given(
    docs=st.lists(st.lists(st.integers(0, 30), max_size=25), min_size=1, max_size=10),
    data=st.data(),
)
def test_pairwise_jaccard_matches_sets(docs: list[list[int]], data: st.DataObject) -> None:
    n = len(docs)
    pairs = data.draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=30)
    )
    left = np.array([p[0] for p in pairs], np.int64)
    right = np.array([p[1] for p in pairs], np.int64)
    hashes, offsets = flat(docs)
    chunk = data.draw(st.sampled_from([1, 7, 1 << 20]))
    got = pairwise_jaccard(hashes, offsets, left, right, chunk_elements=chunk)
    expected = []
    for a, b in pairs:
        sa, sb = set(docs[a]), set(docs[b])
        expected.append(len(sa & sb) / len(sa | sb) if sa and sb else 0.0)
    assert got.dtype == np.float64
    assert got.tolist() == pytest.approx(expected)
    sets, set_offsets = unique_shingles(hashes, offsets)
    assert segments(sets, set_offsets) == [sorted(set(d)) for d in docs]
    for (a, b), want in zip(pairs, expected, strict=True):
        got_one = jaccard(
            sets[set_offsets[a] : set_offsets[a + 1]], sets[set_offsets[b] : set_offsets[b + 1]]
        )
        assert got_one == pytest.approx(want)


def test_pairwise_jaccard_rejects_bad_pairs() -> None:
    hashes, offsets = flat([[1], [2]])
    with pytest.raises(IndexError):
        pairwise_jaccard(hashes, offsets, np.array([0]), np.array([2]))
    with pytest.raises(ValueError):
        pairwise_jaccard(hashes, offsets, np.array([0, 1]), np.array([1]))
    assert (
        pairwise_jaccard(hashes, offsets, np.array([], np.int64), np.array([], np.int64)).size == 0
    )


# --------------------------------------------------------------------------- edges


def ref_edges(keys: list[tuple[int, ...]], ords: list[int]) -> list[tuple[int, int]]:
    groups: dict[tuple[int, ...], set[int]] = defaultdict(set)
    for key, o in zip(keys, ords, strict=True):
        groups[key].add(o)
    edges = []
    for members in groups.values():
        root = min(members)
        edges += [(o, root) for o in members if o != root]
    return sorted(edges)


BIG = st.sampled_from([0, 1, 2, 7, 2**32, 2**63, M64 - 1, M64])


@settings(max_examples=150, deadline=None)
@given(span=st.sampled_from([4, 300, M64]), width=st.sampled_from([1, 2]), data=st.data())
def test_duplicate_edges_match_reference(span: int, width: int, data: st.DataObject) -> None:
    """Few distinct keys (most rows repeat: one exact sort) and many (a few repeats: the rows
    that may repeat are picked first)."""
    key = st.integers(0, span)
    rows = data.draw(st.lists(st.tuples(key, st.integers(0, 2), BIG), max_size=60))
    rows += data.draw(st.lists(st.sampled_from(rows), max_size=4)) if rows else []
    keys_list = [r[:width] for r in rows]
    ords_list = [r[2] for r in rows]
    ords = np.array(ords_list, dtype=np.uint64)
    if width == 1:
        keys = np.array([k[0] for k in keys_list], dtype=np.uint64)
    else:
        keys = np.array(keys_list, dtype=np.uint64).reshape(-1, 2)
    src, dst = duplicate_edges(keys, ords)
    assert src.dtype == dst.dtype == np.uint64
    assert sorted(zip(src.tolist(), dst.tolist(), strict=True)) == ref_edges(keys_list, ords_list)
    assert not (src == dst).any()
    perm = np.array(data.draw(st.permutations(range(len(rows)))), dtype=np.int64)
    src2, dst2 = duplicate_edges(keys[perm], ords[perm])
    assert (src2 == src).all() and (dst2 == dst).all()  # the row order does not matter


def test_duplicate_edges_of_many_rows() -> None:
    """Band-key-like rows: mostly unique keys, some documents sharing several bands."""
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**64, size=(5000, 8), dtype=np.uint64, endpoint=False)
    keys[100:200, :3] = keys[200:300, :3]  # doc i+100 shares bands 0..2 with doc i (100..199)
    keys[0, 5] = keys[1, 5] = keys[2, 5]
    band = np.broadcast_to(np.arange(8, dtype=np.uint64), keys.shape)
    ords = np.broadcast_to(np.arange(5000, dtype=np.uint64)[:, None] * 7, keys.shape)
    composite = np.stack([band.ravel(), keys.ravel()], axis=1)
    src, dst = duplicate_edges(composite, ords.ravel())
    expected = [(7 * (i + 100), 7 * i) for i in range(100, 200)] * 3 + [(7, 0), (14, 0)]
    assert sorted(zip(src.tolist(), dst.tolist(), strict=True)) == sorted(expected)


def test_duplicate_edges_shapes() -> None:
    src, dst = duplicate_edges(np.array([5, 5, 5, 6]), np.array([9, 3, 3, 1]))
    assert src.tolist() == [9] and dst.tolist() == [3]
    src, dst = duplicate_edges(np.zeros((0, 2), np.uint64), np.zeros(0, np.uint64))
    assert src.size == dst.size == 0
    with pytest.raises(ValueError):
        duplicate_edges(np.zeros(3, np.uint64), np.zeros(2, np.uint64))
    with pytest.raises(ValueError):
        duplicate_edges(np.zeros((2, 2, 2), np.uint64), np.zeros(2, np.uint64))
    with pytest.raises(TypeError):
        duplicate_edges(np.zeros(2, np.float64), np.zeros(2, np.uint64))


# --------------------------------------------------------------------------- components


def ref_components(edges: list[tuple[int, int]]) -> dict[int, int]:
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def check_components(edges: list[tuple[int, int]]) -> None:
    src = np.array([e[0] for e in edges], dtype=np.uint64)
    dst = np.array([e[1] for e in edges], dtype=np.uint64)
    members, roots = connected_components(src, dst)
    assert members.dtype == roots.dtype == np.uint64
    assert dict(zip(members.tolist(), roots.tolist(), strict=True)) == ref_components(edges)
    assert (members[1:] > members[:-1]).all()


@SETTINGS
@given(
    edges=st.lists(
        st.tuples(st.one_of(st.integers(0, 30), BIG), st.one_of(st.integers(0, 30), BIG)),
        max_size=60,
    )
)
def test_components_match_union_find(edges: list[tuple[int, int]]) -> None:
    check_components(edges)


@SETTINGS
@given(ids=st.lists(st.integers(0, M64), min_size=2, max_size=80, unique=True), data=st.data())
def test_components_of_chains_and_stars(ids: list[int], data: st.DataObject) -> None:
    chain = list(itertools.pairwise(ids))
    star = [(ids[0], x) if i % 2 else (x, ids[0]) for i, x in enumerate(ids[1:])]
    for edges in (chain, star, chain[::-1]):
        check_components(data.draw(st.permutations(edges)))


def test_components_of_a_long_shuffled_path() -> None:
    """A path of 200k nodes with random ids: the worst case for label propagation."""
    rng = np.random.default_rng(1)
    ids = rng.permutation(np.arange(200_000, dtype=np.uint64) * np.uint64(2**40 + 3))
    order = rng.permutation(ids.size - 1)
    members, roots = connected_components(ids[:-1][order], ids[1:][order])
    assert members.size == ids.size and (roots == ids.min()).all()
    assert (members == np.sort(ids)).all()


def test_components_edge_cases() -> None:
    members, roots = connected_components(np.array([], np.uint64), np.array([], np.uint64))
    assert members.size == roots.size == 0
    members, roots = connected_components(np.array([5, 9]), np.array([5, 2]))
    assert members.tolist() == [2, 5, 9] and roots.tolist() == [2, 5, 2]
    with pytest.raises(ValueError):
        connected_components(np.array([1, 2]), np.array([1]))
