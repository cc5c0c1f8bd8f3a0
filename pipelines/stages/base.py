"""The stage interface: one Arrow table of documents in, kept documents and drop records out.

Every stage sees a batch of documents as a :class:`pyarrow.Table` with at least the columns
``_ord`` (uint64, the document's ordinal: unique and stable for a given input and config) and
``text`` (string), and any other columns the source carried. A stage returns the documents it
keeps (possibly transformed), a table of the ones it drops with the reason and the measured
value, and counters for the run report. Stages are pure functions of their input batch: the
same batch gives the same output on any worker, which is what makes ingestion deterministic.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa

__all__ = ["DROP_SCHEMA", "Stage", "StageOutput", "drop_table"]

#: Schema of the drop records every stage returns: which document, why, and the measured value
#: that failed the rule (NaN where a rule measures nothing, e.g. a user stage).
DROP_SCHEMA = pa.schema(
    [
        pa.field("_ord", pa.uint64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("detail", pa.string()),
    ]
)


def drop_table(
    ords: pa.Array,
    reasons: pa.Array | list[str],
    values: pa.Array | list[float | None] | None = None,
    details: pa.Array | list[str | None] | None = None,
) -> pa.Table:
    """Build a :data:`DROP_SCHEMA` table from parallel columns (``values``/``details`` may be
    omitted, meaning null)."""
    n = len(ords)
    return pa.table(
        [
            pa.array(ords, pa.uint64()),
            pa.array(reasons, pa.string()),
            pa.array(values if values is not None else [None] * n, pa.float64()),
            pa.array(details if details is not None else [None] * n, pa.string()),
        ],
        schema=DROP_SCHEMA,
    )


@dataclass
class StageOutput:
    """What a stage returns for one batch.

    ``table`` holds the documents that continue, in their input order (a stage never reorders);
    ``dropped`` has one :data:`DROP_SCHEMA` row per removed document; ``counters`` adds named
    integers to the run report (e.g. ``{"emails": 3}`` for PII redaction).
    """

    table: pa.Table
    dropped: pa.Table = field(default_factory=lambda: DROP_SCHEMA.empty_table())
    counters: Mapping[str, int] = field(default_factory=dict)


class Stage(abc.ABC):
    """A per-batch document stage (normalize, filters, PII, user code).

    Subclasses set :attr:`name` (used in reports and in drop reasons as ``"<name>:<rule>"``)
    and implement :meth:`apply`. The runner owns batching, counting docs and bytes in and out,
    and timing, so a stage only transforms.
    """

    name: ClassVar[str] = "stage"

    @abc.abstractmethod
    def apply(self, table: pa.Table) -> StageOutput:
        """Process one batch of documents; must keep the input order and the ``_ord`` column."""
