"""Corpora for the ingestion benchmark (``bench_ingest.py``): generated, seeded, cached.

Two kinds, both JSONL with one ``{"id", "text", "url"}`` record per line:

* **synthetic**: documents of a few hundred to a few thousand words (log-normal, median ~600)
  drawn from a real English word vocabulary (counted in Debian docs, man pages and Python
  docstrings on this machine), in sentences and paragraphs, so that Gopher-style quality
  filters pass nearly all of them. Planted, with known ground truth:

  - ~5% **exact duplicates**: the text of an earlier original, byte for byte;
  - ~10% **near duplicates**: an earlier original with a few % of its words replaced and
    sometimes a sentence deleted or inserted, so that the true Jaccard similarity of the two
    word-5-gram sets (see :func:`shingles`) is in [0.8, 0.98];
  - ~3% **near misses**: the same edits, stronger, giving a Jaccard of [0.5, 0.7]; these are
    *not* duplicates and must be kept;
  - ~4% **junk**: too short, hash-tag spam, repeated lines, or mostly numbers, which the quality
    filters should drop.

  Copies always come after their original in the file (so "keep the first of each cluster"
  keeps the original), and are made from originals sampled uniformly from everything emitted
  so far (a reservoir), so many copies lie far from their original (other partitions). The
  ground truth goes to ``<name>.truth.json``: for every planted copy its original and its
  measured Jaccard. Fuzzy-dedup precision and recall are computed on the set of removed ids:
  a removed id is a true positive iff it is a planted exact or near duplicate.

* **real**: files on this machine, one document per file (long files split at line breaks
  into pieces of at most ~100 KB): man pages (gzip unpacked, troff markup stripped),
  text under ``/usr/share/doc`` (gzip unpacked), and the Python standard library's sources,
  in a seeded random order. No ground truth; it has the natural duplicates of such a tree
  (licence texts, changelogs).

Everything is written under ``benchmarks/.data/`` (git-ignored) and reused when present.

Run: ``.venv/bin/python benchmarks/ingest_corpus.py synthetic --size 50MB``
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import sys
import sysconfig
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "benchmarks" / ".data"
GENERATOR_VERSION = 1  # bump when the output of a generator changes: cached files are rebuilt
TEXT_DIRS = ("/usr/share/doc", "/usr/share/man")
NGRAM = 5
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_UNITS |= {"GIB": 2**30}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_size(text: str) -> int:
    """``"50MB"`` -> 50_000_000, ``"2GiB"`` -> 2 * 2**30 (KB/MB/GB are powers of 10)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 50MB, 2GB, 512MiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def size_label(n: int) -> str:
    for unit, mult in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"


# -- shared text helpers -----------------------------------------------------------------------

_NON_WORD = re.compile(r"[^\w\s]+")


def shingles(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """The word n-grams that define the ground truth's Jaccard: lower-cased, every run of
    characters that are neither word characters nor whitespace replaced by a space, split on
    whitespace. (The generator's words are plain ASCII letters, so the usual variants of this
    definition -- datatrove's ``simplify_text``, ours -- give the same sets.)"""
    words = _NON_WORD.sub(" ", text.lower()).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[Any], b: set[Any]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


_TROFF_ESCAPE = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)|\\\((..)|\\\[[^\]]*\]|\\s[-+]?\d+|\\[&|^%]")
_TROFF_TEXT_MACROS = re.compile(r"^\.(?:B|I|BR|BI|IR|IB|RB|RI|SH|SS|SM|TP|IP)\b\s*(.*)$")


def strip_troff(src: str) -> str:
    """Man page source to roughly its text: request lines dropped except the arguments of the
    font and heading macros, font and character escapes removed, ``\\-`` and ``\\e`` kept as
    ``-`` and ``\\``."""
    out: list[str] = []
    for line in src.splitlines():
        if line.startswith((".", "'")):
            m = _TROFF_TEXT_MACROS.match(line)
            if not m or not m.group(1):
                continue
            line = m.group(1).replace('"', "")
        line = _TROFF_ESCAPE.sub("", line).replace("\\-", "-").replace("\\e", "\\")
        out.append(line)
    return "\n".join(out)


def _read_text(path: str) -> str | None:
    try:
        if path.endswith(".gz"):
            with gzip.open(path) as fh:
                data = fh.read()
        else:
            with open(path, "rb") as fh:
                data = fh.read()
        if b"\0" in data:
            return None
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return None


def _text_files(root: str) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                files.append(path)
    return files


def _stdlib_sources() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
        files += [os.path.join(dirpath, n) for n in sorted(filenames) if n.endswith(".py")]
    return files


# -- vocabulary --------------------------------------------------------------------------------


def vocabulary(
    data_dir: Path = DATA, sample_bytes: int = 40 * 10**6
) -> tuple[list[str], np.ndarray]:
    """Words (ASCII letters, 2-15 long, or "a" or "i"; seen at least 3 times) and their
    counts, from about ``sample_bytes`` of text: every 3rd file under /usr/share/doc and
    /usr/share/man, and the docstrings of the Python standard library. Cached as
    ``vocab-v<N>.json``."""
    path = data_dir / f"vocab-v{GENERATOR_VERSION}.json"
    if path.exists():
        doc = json.loads(path.read_text())
        return doc["words"], np.array(doc["counts"], dtype=np.int64)
    import ast

    counts: Counter[str] = Counter()
    word = re.compile(r"[A-Za-z]+")
    taken = 0
    budget = sample_bytes // 3
    for root in TEXT_DIRS:
        got = 0
        for fpath in _text_files(root)[::3]:
            text = _read_text(fpath)
            if text is None:
                continue
            if root.endswith("man"):
                text = strip_troff(text)
            counts.update(w.lower() for w in word.findall(text))
            got += len(text)
            if got >= budget:
                break
        taken += got
    got = 0
    for fpath in _stdlib_sources():
        try:
            tree = ast.parse(Path(fpath).read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef | ast.Module):
                doc = ast.get_docstring(node)
                if doc:
                    counts.update(w.lower() for w in word.findall(doc))
                    got += len(doc)
        if got >= budget:
            break
    taken += got
    items = sorted(
        ((w, c) for w, c in counts.items() if c >= 3 and (1 < len(w) <= 15 or w in "ai")),
        key=lambda wc: (-wc[1], wc[0]),
    )[:60_000]
    words = [w for w, _ in items]
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"words": words, "counts": [c for _, c in items]}))
    log(f"vocabulary: {len(words)} words from {taken / 1e6:.0f} MB of text")
    return words, np.array([c for _, c in items], dtype=np.int64)


# -- synthetic corpus --------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """A JSONL corpus on disk, its size, and (synthetic only) its ground truth file."""

    name: str
    path: Path
    docs: int
    bytes: int
    truth: Path | None = None

    @property
    def mib(self) -> float:
        return self.bytes / 2**20


class _Writer:
    def __init__(self, rng: np.random.Generator, words: list[str], counts: np.ndarray) -> None:
        self.rng = rng
        self.vocab = np.array(words, dtype=object)
        cdf = np.cumsum(counts.astype(np.float64) ** 0.9)  # a little flatter than the sample
        self.cdf = cdf / cdf[-1]

    def words(self, n: int) -> list[str]:
        return self.vocab[np.searchsorted(self.cdf, self.rng.random(n), side="right")].tolist()

    def sentence(self, n: int | None = None) -> list[str]:
        return self.document(0, n or int(self.rng.integers(6, 30)))[1][0]

    def document(self, n_words: int, one_sentence: int = 0) -> list[list[list[str]]]:
        """Paragraphs (2-7 sentences) of sentences (6-29 words, ~6% of words followed by a
        comma, ending in . ? or !); the first paragraph is a title line, 3-8 words. With
        ``one_sentence`` > 0: a title and one sentence of that many words."""
        rng = self.rng
        if one_sentence:
            lens = np.array([one_sentence])
        else:
            lens = rng.integers(6, 30, n_words // 12 + 8)
            lens = lens[: int(np.searchsorted(np.cumsum(lens), n_words)) + 1]
        n_title = int(rng.integers(3, 9))
        ws = self.words(n_title + int(lens.sum()))
        for i in (np.flatnonzero(rng.random(len(ws)) < 0.06) + n_title).tolist():
            if i < len(ws):
                ws[i] += ","
        ends = np.cumsum(lens) + n_title
        marks = np.where(
            rng.random(len(lens)) < 0.9, ".", np.where(rng.random(len(lens)) < 0.5, "?", "!")
        )
        paras: list[list[list[str]]] = [[ws[:n_title]]]
        ws[0] = ws[0].capitalize()
        start, in_para, para_len = n_title, 0, int(rng.integers(2, 8))
        para: list[list[str]] = []
        for end, mark in zip(ends.tolist(), marks.tolist(), strict=True):
            sent = ws[start:end]
            sent[0] = sent[0].rstrip(",").capitalize()
            sent[-1] = sent[-1].rstrip(",") + mark
            para.append(sent)
            start = end
            in_para += 1
            if in_para == para_len:
                paras.append(para)
                para, in_para, para_len = [], 0, int(rng.integers(2, 8))
        if para:
            paras.append(para)
        return paras


def render(paras: list[list[list[str]]]) -> str:
    return "\n\n".join(" ".join(" ".join(s) for s in p) for p in paras)


def parse(text: str) -> list[list[list[str]]]:
    """:func:`render` inverted (sentences end at a word ending in . ? or !)."""
    paras = []
    for block in text.split("\n\n"):
        sents: list[list[str]] = [[]]
        for w in block.split(" "):
            sents[-1].append(w)
            if w[-1] in ".?!":
                sents.append([])
        paras.append([s for s in sents if s])
    return paras


def _edit(
    w: _Writer, text: str, lo: float, hi: float, base: set[tuple[str, ...]]
) -> tuple[str, float] | None:
    """A copy of ``text`` whose 5-gram Jaccard with it lies in [lo, hi]: maybe one sentence
    deleted and/or inserted, then k words replaced at random places (k searched for)."""
    rng = w.rng
    paras = parse(text)
    body = [(pi, si) for pi in range(1, len(paras)) for si in range(len(paras[pi]))]
    if rng.random() < 0.5 and len(body) > 3:
        pi, si = body[int(rng.integers(len(body)))]
        if len(paras[pi]) > 1:
            del paras[pi][si]
    if rng.random() < 0.5:
        pi = int(rng.integers(1, len(paras)))
        paras[pi].insert(int(rng.integers(len(paras[pi]) + 1)), w.sentence())
    slots = [
        (pi, si, wi) for pi, p in enumerate(paras) for si, s in enumerate(p) for wi in range(len(s))
    ]
    order = rng.permutation(len(slots))
    target = float(rng.uniform(lo, min(hi, lo + 0.15)))
    kept = 2 * target / (1 + target)  # share of the original's 5-grams to keep
    k = max(1, round((1 - kept ** (1 / NGRAM)) * len(slots)))
    repl = w.words(len(slots))
    for _ in range(10):
        new = [[list(s) for s in p] for p in paras]
        for j in order[:k].tolist():
            pi, si, wi = slots[j]
            old = new[pi][si][wi]
            tail = old[len(old.rstrip(".,?!")) :]
            r = repl[j]
            new[pi][si][wi] = (r.capitalize() if old[:1].isupper() else r) + tail
        out = render(new)
        jac = jaccard(base, shingles(out))
        if lo <= jac <= hi:
            return out, jac
        k = max(1, round(k * (1.4 if jac > hi else 0.7)))
    return None


def _junk(w: _Writer, kind: str) -> str:
    rng = w.rng
    if kind == "short":
        return " ".join(w.sentence(int(rng.integers(8, 20))) + w.sentence(int(rng.integers(8, 20))))
    if kind == "hashtags":
        return " ".join(
            "#" + x if rng.random() < 0.4 else x for x in w.words(int(rng.integers(150, 600)))
        )
    if kind == "repeated":
        lines = [" ".join(w.sentence()) for _ in range(int(rng.integers(3, 6)))]
        return "\n".join(
            lines[int(i)] for i in rng.integers(0, len(lines), int(rng.integers(30, 80)))
        )
    nums = rng.integers(0, 10**6, int(rng.integers(200, 800))).astype(str).tolist()
    for i in np.flatnonzero(rng.random(len(nums)) < 0.1).tolist():
        nums[i] = w.words(1)[0]
    return " ".join(nums)


def synthetic_corpus(
    size: int,
    seed: int = 0,
    data_dir: Path = DATA,
    *,
    exact_rate: float = 0.05,
    near_rate: float = 0.10,
    miss_rate: float = 0.03,
    junk_rate: float = 0.04,
) -> Corpus:
    """Generate (or reuse) ``synthetic-<size>-s<seed>-v<N>.jsonl`` of about ``size`` bytes."""
    name = f"synthetic-{size_label(size)}-s{seed}-v{GENERATOR_VERSION}"
    path = data_dir / f"{name}.jsonl"
    truth_path = data_dir / f"{name}.truth.json"
    meta_path = data_dir / f"{name}.meta.json"
    if path.exists() and truth_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return Corpus(name, path, meta["docs"], meta["bytes"], truth_path)
    words, counts = vocabulary(data_dir)
    log(f"generating {name} ...")
    t0 = time.perf_counter()
    w = _Writer(np.random.default_rng([seed, GENERATOR_VERSION]), words, counts)
    rng = w.rng
    pool: list[tuple[str, str]] = []  # reservoir of (id, text) of originals
    pool_cap = 5000
    originals = 0
    truth: dict[str, Any] = {"exact": {}, "near": {}, "near_miss": {}, "junk": {}}
    p_cum = np.cumsum([exact_rate, near_rate, miss_rate, junk_rate])
    sites = w.words(2000)
    docs = written = 0
    tmp = path.with_suffix(".jsonl.tmp")
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as out:
        while written < size:
            doc_id = f"doc-{docs:09d}"
            kind = int(np.searchsorted(p_cum, rng.random(), side="right"))
            text: str | None = None
            if kind in (0, 1, 2) and len(pool) >= 20:
                src_id, src = pool[int(rng.integers(len(pool)))]
                if kind == 0:
                    text = src
                    truth["exact"][doc_id] = src_id
                else:
                    lo, hi = (0.8, 0.98) if kind == 1 else (0.5, 0.7)
                    got = _edit(w, src, lo, hi, shingles(src))
                    if got is not None:
                        text = got[0]
                        key = "near" if kind == 1 else "near_miss"
                        truth[key][doc_id] = [src_id, round(got[1], 4)]
            elif kind == 3:
                jk = str(rng.choice(["short", "hashtags", "repeated", "numbers"]))
                text = _junk(w, jk)
                truth["junk"][doc_id] = jk
            if text is None:  # an original
                n_words = int(np.clip(rng.lognormal(np.log(600), 0.7), 150, 5000))
                text = render(w.document(n_words))
                originals += 1
                if len(pool) < pool_cap:
                    pool.append((doc_id, text))
                else:
                    j = int(rng.integers(originals))
                    if j < pool_cap:
                        pool[j] = (doc_id, text)
            slug = "-".join(w.words(3))
            url = f"https://{sites[int(rng.integers(len(sites)))]}.example.org/{slug}/{docs}"
            line = json.dumps({"id": doc_id, "text": text, "url": url}, ensure_ascii=False)
            written += out.write(line + "\n")
            docs += 1
    tmp.replace(path)
    truth_path.write_text(json.dumps(truth))
    meta = {"docs": docs, "bytes": path.stat().st_size} | {k: len(v) for k, v in truth.items()}
    meta_path.write_text(json.dumps(meta))
    log(
        f"  {docs} docs, {meta['bytes'] / 2**20:.1f} MiB in {time.perf_counter() - t0:.0f} s: "
        f"{meta['exact']} exact, {meta['near']} near dups, {meta['near_miss']} near misses, "
        f"{meta['junk']} junk"
    )
    return Corpus(name, path, docs, meta["bytes"], truth_path)


def load_truth(corpus: Corpus) -> dict[str, Any]:
    if corpus.truth is None:
        raise ValueError(f"corpus {corpus.name} has no ground truth")
    return json.loads(corpus.truth.read_text())


def planted(truth: dict[str, Any], work: str) -> set[str]:
    """The ids a work should remove: (a) filters: the junk; (q) quality filters only: the junk
    except the "repeated" kind (repeated lines pass the quality rules; only the repetition rules
    catch them); (b) exact dedup: the exact duplicates; (c) fuzzy dedup: the exact and the near
    duplicates (never the near misses)."""
    if work == "q":
        return {i for i, kind in truth["junk"].items() if kind != "repeated"}
    keys = {"a": ("junk",), "b": ("exact",), "c": ("exact", "near")}[work]
    return set().union(*(truth[k] for k in keys))


def precision_recall(removed: set[str], should: set[str]) -> tuple[float, float]:
    """(precision, recall) of the ``removed`` ids against the ids that ``should`` go."""
    tp = len(removed & should)
    precision = tp / len(removed) if removed else 1.0
    recall = tp / len(should) if should else 1.0
    return precision, recall


# -- real-text corpus --------------------------------------------------------------------------


def real_corpus(size: int, seed: int = 0, data_dir: Path = DATA, max_doc: int = 100_000) -> Corpus:
    """Generate (or reuse) ``real-<size>-s<seed>-v<N>.jsonl``: up to ``size`` bytes of JSONL
    made of the text files on this machine (see the module docstring); smaller when the
    machine has less."""
    name = f"real-{size_label(size)}-s{seed}-v{GENERATOR_VERSION}"
    path = data_dir / f"{name}.jsonl"
    meta_path = data_dir / f"{name}.meta.json"
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return Corpus(name, path, meta["docs"], meta["bytes"])
    log(f"generating {name} ...")
    t0 = time.perf_counter()
    files = [
        (p, "man" if root.endswith("man") else "doc")
        for root in TEXT_DIRS
        for p in _text_files(root)
    ]
    files += [(p, "py") for p in _stdlib_sources()]
    random.Random(seed).shuffle(files)
    docs = written = 0
    per_kind: Counter[str] = Counter()
    tmp = path.with_suffix(".jsonl.tmp")
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as out:
        for fpath, kind in files:
            if written >= size:
                break
            text = _read_text(fpath)
            if text is None:
                continue
            if kind == "man":
                text = strip_troff(text)
            if len(text) < 100:
                continue
            pieces, start = [], 0
            while start < len(text):
                end = (
                    len(text)
                    if len(text) - start <= max_doc
                    else text.rfind("\n", start, start + max_doc)
                )
                end = start + max_doc if end <= start else end
                pieces.append(text[start:end])
                start = end
            for i, piece in enumerate(pieces):
                rec = {
                    "id": f"real-{docs:08d}",
                    "text": piece,
                    "url": f"file://{fpath}" + (f"#part{i}" if len(pieces) > 1 else ""),
                }
                written += out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                docs += 1
                per_kind[kind] += 1
    tmp.replace(path)
    meta = {"docs": docs, "bytes": path.stat().st_size, "kinds": dict(per_kind)}
    meta_path.write_text(json.dumps(meta))
    log(
        f"  {docs} docs, {meta['bytes'] / 2**20:.1f} MiB in {time.perf_counter() - t0:.0f} s "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(per_kind.items()))})"
    )
    return Corpus(name, path, docs, meta["bytes"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("kind", choices=["synthetic", "real"])
    ap.add_argument("--size", type=parse_size, default=parse_size("50MB"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=DATA)
    args = ap.parse_args(argv)
    make = synthetic_corpus if args.kind == "synthetic" else real_corpus
    corpus = make(args.size, args.seed, args.data_dir)
    print(f"{corpus.path}: {corpus.docs} docs, {corpus.mib:.1f} MiB")
    if corpus.truth is not None:
        print(f"ground truth: {corpus.truth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
