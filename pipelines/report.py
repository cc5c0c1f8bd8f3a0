"""The run report of an ingest job, and ``explain``: why is a document (not) in a dataset?"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from datastore import StorageConfig, TableDataset, open_dataset
from datastore.errors import NotFound

if TYPE_CHECKING:
    from pipelines.plan import Plan
    from pipelines.tasks import JobContext

__all__ = ["IngestReport", "JobReport", "build_report", "explain"]

_R = TypeVar("_R", bound="JobReport")


class JobReport:
    """A dataclass report that round-trips through JSON (``--json``, manifest metadata)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dict(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_R], doc: dict[str, Any]) -> _R:
        """Inverse of :meth:`to_dict` (unknown keys from newer versions are ignored)."""
        names = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass
class IngestReport(JobReport):
    """What an ingest job did. ``to_dict`` is what ``--json`` prints and what the manifest
    keeps; sizes are bytes, times seconds."""

    output_uri: str
    output_version: int
    job_id: str
    docs_in: int
    docs_out: int
    exact_duplicates: int
    fuzzy_duplicates: int
    fuzzy_clusters: int
    quarantined: int
    filtered: int
    records_read: int
    bytes_in: int
    bytes_out: int
    text_bytes_in: int
    partitions: int
    partitions_resumed: int
    seconds: float
    docs_per_second: float
    mib_per_second: float
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    drops_by_reason: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    removed_uri: str = ""
    removed_version: int | None = None
    quarantine_uri: str = ""
    quarantine_version: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    workers_lost: int = 0

    def summary(self) -> str:
        """The human summary printed at the end of a run."""
        lines = [
            f"ingested {self.docs_in:,} documents ({self.text_bytes_in / 2**20:,.1f} MiB of text, "
            f"{self.bytes_in / 2**20:,.1f} MiB read) -> {self.docs_out:,} documents in "
            f"{self.output_uri} version {self.output_version}",
            f"  {self.seconds:,.1f} s, {self.docs_per_second:,.0f} docs/s, "
            f"{self.mib_per_second:,.1f} MiB/s; {self.partitions} partitions"
            + (f" ({self.partitions_resumed} resumed)" if self.partitions_resumed else "")
            + (
                f"; {self.workers_lost} workers lost and their tasks redone"
                if self.workers_lost
                else ""
            ),
        ]
        for name, s in self.stages.items():
            extra = ", ".join(f"{k} {v:,}" for k, v in sorted(s.get("counters", {}).items()) if v)
            lines.append(
                f"  {name:<10} {s['docs_in']:>10,} in  {s['docs_out']:>10,} out"
                + (f"  ({extra})" if extra else "")
            )
        lines.append(
            f"  dedup      {self.exact_duplicates:,} exact duplicates, "
            f"{self.fuzzy_duplicates:,} near duplicates in {self.fuzzy_clusters:,} clusters"
        )
        lines.append(
            f"  quarantine {self.quarantined:,} records"
            + (f" (see {self.quarantine_uri})" if self.quarantined else "")
        )
        if self.drops_by_reason:
            lines.append("  removed by reason (examples):")
            for reason, n in sorted(self.drops_by_reason.items(), key=lambda kv: -kv[1]):
                ex = ", ".join(self.examples.get(reason, []))
                lines.append(f"    {reason:<40} {n:>10,}  {ex}")
        return "\n".join(lines)


def build_report(
    *,
    ctx: JobContext,
    plan: Plan,
    prepared: list[dict[str, Any]],
    removed: pa.Table,
    clusters: int,
    version: int,
    side_versions: dict[str, int],
    timings: dict[str, float],
    rows_out: int,
    bytes_out: int,
) -> IngestReport:
    """Aggregate the per-partition statistics and the dedup result into the report."""
    stages: dict[str, dict[str, Any]] = {}
    examples: dict[str, list[str]] = {}
    by_reason: dict[str, int] = {}
    for s in prepared:
        for name, st in s["stages"].items():
            agg = stages.setdefault(
                name, {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0, "counters": {}}
            )
            for k in ("docs_in", "docs_out", "bytes_in", "bytes_out"):
                agg[k] += st[k]
            for k, v in st["counters"].items():
                agg["counters"][k] = agg["counters"].get(k, 0) + v
        for reason, ids in s["examples"].items():
            examples.setdefault(reason, [])
            examples[reason].extend(ids[: 3 - len(examples[reason])])
    reasons = removed.column("reason").to_pylist() if removed.num_rows else []
    for reason in reasons:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    meta = removed.schema.metadata or {}
    for reason, ids in json.loads(meta.get(b"examples", b"{}")).items():
        examples[reason] = ids[:3]
    for name, st in stages.items():
        for rule, n in st["counters"].items():
            if name == "filters" and n:
                by_reason[f"filters:{rule}"] = by_reason.get(f"filters:{rule}", 0) + n
        dropped = st["docs_in"] - st["docs_out"]
        if name != "filters" and dropped:
            by_reason[f"{name}"] = by_reason.get(name, 0) + dropped
    exact = reasons.count("exact_duplicate")
    fuzzy = reasons.count("fuzzy_duplicate")
    docs_in = sum(int(s["docs_read"]) for s in prepared)
    kept = sum(int(s["docs_kept"]) for s in prepared)
    seconds = timings.get("total", 0.0)
    text_in = sum(int(s["text_bytes_read"]) for s in prepared)
    bytes_in = sum(int(s["bytes_in"]) for s in prepared)
    return IngestReport(
        output_uri=ctx.output_uri,
        output_version=version,
        job_id=ctx.job_id,
        docs_in=docs_in,
        docs_out=rows_out,
        exact_duplicates=exact,
        fuzzy_duplicates=fuzzy,
        fuzzy_clusters=clusters,
        quarantined=sum(int(s["quarantined"]) for s in prepared),
        filtered=docs_in - kept,
        records_read=sum(int(s["records"]) for s in prepared),
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        text_bytes_in=text_in,
        partitions=len(plan.partitions),
        partitions_resumed=sum(1 for s in prepared if s.get("resumed")),
        seconds=round(seconds, 3),
        docs_per_second=round(docs_in / seconds, 1) if seconds else 0.0,
        mib_per_second=round(bytes_in / 2**20 / seconds, 2) if seconds else 0.0,
        stages=stages,
        drops_by_reason=by_reason,
        examples=examples,
        removed_uri=f"{ctx.output_uri}/_removed",
        removed_version=side_versions.get("removed"),
        quarantine_uri=f"{ctx.output_uri}/_quarantine",
        quarantine_version=side_versions.get("quarantine"),
        timings={k: round(v, 3) for k, v in timings.items()},
    )


def explain(
    output: str,
    doc_id: str,
    version: int | None = None,
    storage: StorageConfig | None = None,
) -> dict[str, Any]:
    """Where document ``doc_id`` went in version ``version`` (default latest) of an ingested
    dataset: ``{"status": "kept", "shard": ..., "row": ...}``, ``{"status": "removed",
    "reason": ..., "value": ..., "detail": ...}`` or ``{"status": "not found"}``."""
    ds = open_dataset(output, version, config=storage)
    meta = ds.manifest.metadata.get("ingest")
    if not meta:
        raise NotFound(f"{output} version {ds.version} was not written by `shardyard ingest`")
    base: dict[str, Any] = {"id": doc_id, "dataset": output, "version": ds.version}
    assert isinstance(ds, TableDataset)
    hits: list[dict[str, Any]] = []
    for i, shard in enumerate(ds.shards):
        table = ds.read_shard(i, columns=["id", "source_uri", "source_offset"])
        rows = pc.indices_nonzero(pc.equal(table.column("id"), doc_id)).to_pylist()
        for r in rows:
            hits.append(
                {
                    **base,
                    "status": "kept",
                    "shard": shard.path,
                    "row": r,
                    "source_uri": table.column("source_uri")[r].as_py(),
                    "source_offset": table.column("source_offset")[r].as_py(),
                }
            )
    side = meta["removed"]
    removed = open_dataset(side["uri"], side["version"], config=storage)
    assert isinstance(removed, TableDataset)
    for i in range(len(removed.shards)):
        table = removed.read_shard(i)
        for r in pc.indices_nonzero(pc.equal(table.column("id"), doc_id)).to_pylist():
            row = table.slice(r, 1).to_pylist()[0]
            hits.append({**base, "status": "removed", **row})
    if not hits:
        return {**base, "status": "not found"}
    return hits[0] if len(hits) == 1 else {**base, "status": "multiple", "matches": hits}
