"""The ingest pipeline's configuration: typed sections, loaded from TOML or YAML, overridable.

A pipeline config file has one table per section (``[input]``, ``[normalize]``, ``[filters]``,
``[pii]``, ``[dedup.exact]``, ``[dedup.fuzzy]``, ``[output]``, ``[errors]``) and a list of user
stages (``[[stages]]``). Every key is optional; the defaults below are what ``shardyard ingest``
does without a file. CLI flags override the file, and ``--set section.key=value`` overrides any
single key. Unknown sections or keys are errors, never silently ignored (a typo in a threshold
must not turn a filter off).

Everything here except :class:`ExecutionConfig` feeds the job's identity
(:meth:`IngestConfig.fingerprint`): the same inputs and the same config give the same output, and
a rerun with them resumes the earlier job; how many workers run it does not matter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from datastore.errors import InvalidInput

__all__ = [
    "ErrorPolicy",
    "ExactDedupConfig",
    "ExecutionConfig",
    "FilterConfig",
    "FuzzyDedupConfig",
    "IngestConfig",
    "InputConfig",
    "NormalizeConfig",
    "OutputConfig",
    "PiiConfig",
    "UserStageConfig",
    "load_config",
]

InputFormat = Literal["jsonl", "parquet", "csv", "text"]
#: Fuzzy dedup's signature algorithms (:func:`pipelines.stages.minhash.minhash_signatures`).
SignatureAlgorithm = Literal["minhash", "oph"]
MiB = 1024 * 1024


@dataclass(frozen=True)
class InputConfig:
    """How inputs are read and split into partitions.

    ``format`` None means detect by extension (``.jsonl``/``.json``/``.ndjson`` with optional
    ``.gz``/``.zst``, ``.parquet``, ``.csv``/``.tsv``, anything else is one text document per
    file). ``id_field`` is used as the document id where a record has it; other records get a
    stable id derived from their source location. ``partition_bytes`` is the input bytes per
    task: small files are batched up to it and large uncompressed JSONL files are split into byte
    ranges of that size at line boundaries. Records over ``max_record_bytes`` are quarantined.
    """

    format: InputFormat | None = None
    text_field: str = "text"
    id_field: str = "id"
    partition_bytes: int = 128 * MiB
    max_record_bytes: int = 32 * MiB
    csv_delimiter: str = ","


@dataclass(frozen=True)
class NormalizeConfig:
    """Text normalization, applied before filters and dedup (so dedup sees normalized text)."""

    enabled: bool = True
    nfc: bool = True  # Unicode NFC
    strip_control: bool = True  # remove C0/C1 control characters except \n and \t
    whitespace: bool = True  # collapse runs of spaces/tabs, trim lines, at most one blank line


@dataclass(frozen=True)
class FilterConfig:
    """Quality filters in the style of Gopher (Rae et al. 2021); None turns a rule off.

    Rules run in the order of the fields; a document is dropped by the first rule it fails, and
    the drop record carries that rule's name and the measured value. Words are whitespace
    separated tokens. ``top_ngram_char_fraction`` maps n to the largest allowed fraction of
    characters covered by the most frequent word n-gram; ``duplicate_ngram_char_fraction`` maps
    n to the largest allowed fraction of characters in word n-grams that occur more than once.

    Two definitions differ from datatrove's Gopher filters, so the same thresholds are stricter
    here: every occurrence of a repeated n-gram counts, the first one included (as RedPajama-v2's
    ``rps_doc_frac_chars_dupe_ngrams``; datatrove counts only the later ones), and tokens made
    of punctuation alone count as words (datatrove leaves them out of word counts and lengths).
    """

    enabled: bool = True
    min_chars: int | None = None
    max_chars: int | None = None
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1  # ('#' and '...') per word
    min_alpha_word_ratio: float | None = 0.8  # words with at least one alphabetic character
    min_alnum_char_ratio: float | None = None  # alphanumeric characters / all characters
    max_duplicate_line_fraction: float | None = 0.3
    max_duplicate_line_char_fraction: float | None = 0.2
    top_ngram_char_fraction: dict[int, float] = field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}
    )
    duplicate_ngram_char_fraction: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )


@dataclass(frozen=True)
class PiiConfig:
    """Redaction of personal data in the text; off by default."""

    enabled: bool = False
    emails: bool = True
    ip_addresses: bool = True
    phone_numbers: bool = True
    email_replacement: str = "<EMAIL>"
    ip_replacement: str = "<IP_ADDRESS>"
    phone_replacement: str = "<PHONE>"


@dataclass(frozen=True)
class ExactDedupConfig:
    """Global exact dedup on a 128-bit hash of the normalized text; the first occurrence in
    input order survives."""

    enabled: bool = True


@dataclass(frozen=True)
class FuzzyDedupConfig:
    """MinHash + LSH near-duplicate removal.

    Documents are shingled into word ``ngram``-grams (lower-cased, punctuation stripped) and
    hashed under ``bands * rows`` permutations; two documents are candidates when all ``rows``
    values of any band agree, i.e. the LSH threshold is about ``(1/bands) ** (1/rows)``
    Jaccard. Candidate pairs are joined into clusters (connected components) and the first
    document of each cluster in input order survives. With ``verify_jaccard`` a candidate pair
    only counts when the true Jaccard similarity of the two shingle sets is at least
    ``jaccard_threshold``, which removes the false positives LSH lets through. ``buckets`` is the
    number of spill buckets the signatures are shuffled into (None: chosen from the corpus size),
    which bounds the memory of each bucket task.

    ``algorithm`` computes the signatures: ``"oph"`` (the default), one-permutation hashing
    with optimal densification, hashes each shingle once; ``"minhash"``, classic MinHash,
    ``bands * rows`` times. At 120 permutations OPH signatures are about 13x faster (shingles
    and signatures together about 2.3x) with the same recall of near duplicates and the same
    rate of near misses becoming candidates, within noise, on our benchmarks. The two give
    different signatures (see :mod:`pipelines.stages.oph`); OPH needs ``bands * rows <= 4096``.
    """

    enabled: bool = True
    ngram: int = 5
    bands: int = 20
    rows: int = 6
    seed: int = 1
    verify_jaccard: bool = False
    jaccard_threshold: float = 0.8
    buckets: int | None = None
    algorithm: SignatureAlgorithm = "oph"


@dataclass(frozen=True)
class OutputConfig:
    """The output dataset's table format and compression (one shard per input partition)."""

    format: Literal["parquet", "arrow"] = "parquet"
    compression: str | None = "zstd"


@dataclass(frozen=True)
class ErrorPolicy:
    """``max_errors``: fail the job when more records than this are quarantined; an integer is a
    count, a number below 1 a fraction of the records read; None never fails."""

    max_errors: float | None = None


@dataclass(frozen=True)
class UserStageConfig:
    """A user stage: ``function`` is ``"package.module:name"``, importable on every worker.

    ``mode = "document"`` calls ``fn(record: dict) -> dict | None`` per document (None drops it;
    a returned dict replaces the record's fields); ``mode = "batch"`` calls
    ``fn(table: pyarrow.Table) -> pyarrow.Table`` with the ``_ord`` column kept for the rows that
    survive. ``options`` are passed as keyword arguments.
    """

    function: str
    mode: Literal["document", "batch"] = "batch"
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecutionConfig:
    """Where and how the job runs; never part of the job's identity."""

    scheduler: str | None = None  # tcp://host:port of an existing Dask scheduler
    workers: int | None = None  # LocalCluster worker processes (default: one per core)
    memory_limit: str | None = None  # per LocalCluster worker, e.g. "4GiB" (default: RAM / workers)
    processes: bool = True  # LocalCluster with worker processes (False: threads, for tests)
    work_dir: str | None = None  # default: <output>/_work
    keep_work: bool = False
    progress: bool = True


@dataclass(frozen=True)
class IngestConfig:
    """The whole pipeline config. ``execution`` is excluded from :meth:`fingerprint`."""

    input: InputConfig = field(default_factory=InputConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    fuzzy_dedup: FuzzyDedupConfig = field(default_factory=FuzzyDedupConfig)
    stages: tuple[UserStageConfig, ...] = ()
    output: OutputConfig = field(default_factory=OutputConfig)
    errors: ErrorPolicy = field(default_factory=ErrorPolicy)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def to_dict(self, *, with_execution: bool = True) -> dict[str, Any]:
        """The config as plain JSON-able data, in file layout (``dedup.exact``, ...)."""
        doc = {
            "input": dataclasses.asdict(self.input),
            "normalize": dataclasses.asdict(self.normalize),
            "filters": _stringify_keys(dataclasses.asdict(self.filters)),
            "pii": dataclasses.asdict(self.pii),
            "dedup": {
                "exact": dataclasses.asdict(self.exact_dedup),
                "fuzzy": dataclasses.asdict(self.fuzzy_dedup),
            },
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "output": dataclasses.asdict(self.output),
            "errors": dataclasses.asdict(self.errors),
        }
        if with_execution:
            doc["execution"] = dataclasses.asdict(self.execution)
        return doc

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of everything that decides the output."""
        body = json.dumps(self.to_dict(with_execution=False), sort_keys=True, allow_nan=False)
        return hashlib.sha256(body.encode()).hexdigest()

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str = "config") -> IngestConfig:
        """Build from file-layout data; unknown sections or keys raise :class:`InvalidInput`."""
        doc = dict(doc)
        dedup = doc.pop("dedup", {}) or {}
        if not isinstance(dedup, Mapping):
            raise InvalidInput(f"{where}: [dedup] must be a table with 'exact' and 'fuzzy'")
        extra = set(dedup) - {"exact", "fuzzy"}
        if extra:
            raise InvalidInput(f"{where}: unknown section dedup.{sorted(extra)[0]}")
        sections: dict[str, Any] = {
            "input": _build(InputConfig, doc.pop("input", {}), f"{where} [input]"),
            "normalize": _build(NormalizeConfig, doc.pop("normalize", {}), f"{where} [normalize]"),
            "filters": _build(FilterConfig, doc.pop("filters", {}), f"{where} [filters]"),
            "pii": _build(PiiConfig, doc.pop("pii", {}), f"{where} [pii]"),
            "exact_dedup": _build(
                ExactDedupConfig, dedup.get("exact", {}), f"{where} [dedup.exact]"
            ),
            "fuzzy_dedup": _build(
                FuzzyDedupConfig, dedup.get("fuzzy", {}), f"{where} [dedup.fuzzy]"
            ),
            "output": _build(OutputConfig, doc.pop("output", {}), f"{where} [output]"),
            "errors": _build(ErrorPolicy, doc.pop("errors", {}), f"{where} [errors]"),
            "execution": _build(ExecutionConfig, doc.pop("execution", {}), f"{where} [execution]"),
        }
        stages = doc.pop("stages", []) or []
        if not isinstance(stages, list):
            raise InvalidInput(f"{where}: [[stages]] must be a list of tables")
        sections["stages"] = tuple(
            _build(UserStageConfig, s, f"{where} [[stages]] #{i + 1}") for i, s in enumerate(stages)
        )
        if doc:
            raise InvalidInput(
                f"{where}: unknown section [{sorted(doc)[0]}]; known: input, normalize, filters, "
                "pii, dedup.exact, dedup.fuzzy, stages, output, errors, execution"
            )
        config = cls(**sections)
        config.validate(where)
        return config

    def validate(self, where: str = "config") -> None:
        """Cross-field checks; raises :class:`InvalidInput` naming the key and the fix."""
        fz = self.fuzzy_dedup
        for key in ("ngram", "bands", "rows"):
            if getattr(fz, key) < 1:
                raise InvalidInput(f"{where}: dedup.fuzzy.{key} must be at least 1")
        if not 0.0 < fz.jaccard_threshold <= 1.0:
            raise InvalidInput(f"{where}: dedup.fuzzy.jaccard_threshold must be in (0, 1]")
        if fz.algorithm == "oph" and fz.bands * fz.rows > 4096:  # pipelines.stages.oph.MAX_BINS
            raise InvalidInput(
                f"{where}: dedup.fuzzy.bands * rows must be at most 4096 with algorithm 'oph', "
                f"not {fz.bands * fz.rows}; use algorithm = 'minhash' or fewer bands or rows"
            )
        if fz.buckets is not None and fz.buckets < 1:
            raise InvalidInput(f"{where}: dedup.fuzzy.buckets must be at least 1")
        if self.input.partition_bytes < 1024:
            raise InvalidInput(f"{where}: input.partition_bytes must be at least 1024")
        if self.input.max_record_bytes < 1:
            raise InvalidInput(f"{where}: input.max_record_bytes must be positive")
        me = self.errors.max_errors
        if me is not None and me < 0:
            raise InvalidInput(f"{where}: errors.max_errors must not be negative")
        if self.output.format not in ("parquet", "arrow"):
            raise InvalidInput(f"{where}: output.format must be 'parquet' or 'arrow'")

    def with_overrides(self, overrides: Mapping[str, Any]) -> IngestConfig:
        """A copy with dotted keys replaced, e.g. ``{"filters.min_words": 20}``."""
        doc = self.to_dict()
        for dotted, value in overrides.items():
            parts = dotted.split(".")
            node: Any = doc
            for part in parts[:-1]:
                if not isinstance(node, dict) or part not in node:
                    raise InvalidInput(f"unknown config key {dotted!r}")
                node = node[part]
            if not isinstance(node, dict) or parts[-1] not in node:
                raise InvalidInput(f"unknown config key {dotted!r}")
            node[parts[-1]] = value
        return IngestConfig.from_dict(doc, "overrides")


def load_config(path: str | Path | None) -> IngestConfig:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) pipeline config; None: defaults."""
    if path is None:
        return IngestConfig()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise InvalidInput(f"cannot read pipeline config {p}: {err.strerror or err}") from None
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(raw) or {}
        else:
            doc = tomllib.loads(raw.decode())
    except Exception as err:
        line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InvalidInput(f"pipeline config {p} is not valid: {line}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"pipeline config {p} must be a mapping of sections")
    return IngestConfig.from_dict(doc, str(p))


_D = TypeVar("_D")


def _build(cls: type[_D], data: Any, where: str) -> _D:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{where} must be a table of keys")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise InvalidInput(
            f"{where}: unknown key {sorted(unknown)[0]!r}; known keys: {', '.join(sorted(names))}"
        )
    values = {k: _coerce(v, hints[k], f"{where} {k}") for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as err:
        raise InvalidInput(f"{where}: {err}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check (and gently convert) one value against its annotation."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if value not in args:
            raise InvalidInput(
                f"{where} must be one of {', '.join(map(repr, args))}, not {value!r}"
            )
        return value
    if args and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise InvalidInput(f"{where} must be true or false, not {value!r}")
        return value
    if hint is int:
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{where} must be an integer, not {value!r}") from None
    if hint is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{where} must be a number, not {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise InvalidInput(f"{where} must be a string, not {value!r}")
        return value
    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise InvalidInput(f"{where} must be a table, not {value!r}") from None
        if not isinstance(value, Mapping):
            raise InvalidInput(f"{where} must be a table, not {value!r}")
        kt, vt = args
        return {_coerce(k, kt, where): _coerce(v, vt, where) for k, v in value.items()}
    return value


def _stringify_keys(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        k: ({str(kk): vv for kk, vv in v.items()} if isinstance(v, dict) else v)
        for k, v in doc.items()
    }
