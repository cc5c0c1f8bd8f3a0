"""Per-batch document stages of the ingest pipeline: normalize, quality filters, PII
redaction and user functions (dedup works across batches and lives elsewhere).

Every stage maps one Arrow batch of documents to the documents it keeps, drop records and
counters (:class:`StageOutput`); :func:`build_stages` turns an :class:`IngestConfig` into the
enabled stages in pipeline order.
"""

from __future__ import annotations

from pipelines.config import IngestConfig
from pipelines.stages.base import DROP_SCHEMA, Stage, StageOutput, drop_table
from pipelines.stages.filters import QualityFilter
from pipelines.stages.normalize import Normalize
from pipelines.stages.pii import RedactPII
from pipelines.stages.user import UserStage

__all__ = [
    "DROP_SCHEMA",
    "Normalize",
    "QualityFilter",
    "RedactPII",
    "Stage",
    "StageOutput",
    "UserStage",
    "build_stages",
    "drop_table",
]


def build_stages(config: IngestConfig) -> list[Stage]:
    """The enabled per-batch stages in order: normalize, filters, pii, then the user stages as
    listed. User functions are imported here, so a bad ``function`` fails before any work."""
    stages: list[Stage] = []
    if config.normalize.enabled:
        stages.append(Normalize(config.normalize))
    if config.filters.enabled:
        stages.append(QualityFilter(config.filters))
    if config.pii.enabled:
        stages.append(RedactPII(config.pii))
    stages.extend(UserStage(user) for user in config.stages)
    return stages
