"""loaders: datasets into training.

Built so far: :mod:`loaders.plan`, the pure arithmetic of an epoch (seeded block shuffle across
shards, batches partitioned over ranks x DataLoader workers exactly once, resume and elastic
resume from one global position). The streaming datasets that use it are still to come (see
docs/architecture.md).
"""

from loaders.plan import POLICIES, BatchPlan, EpochOrder, LoaderState, Policy, shuffle_quality

__all__ = ["POLICIES", "BatchPlan", "EpochOrder", "LoaderState", "Policy", "shuffle_quality"]
