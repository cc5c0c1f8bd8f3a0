"""loaders: Shardyard datasets into training.

- :class:`StreamingDataset` / :class:`StatefulLoader` (:mod:`loaders.streaming`): whole batches
  from table or packed-token datasets (local or ``s3://``) for PyTorch, shuffled across shards,
  exactly once per epoch over ranks x DataLoader workers, resumable at another world size.
- :mod:`loaders.plan`: the pure arithmetic behind them (importable without PyTorch).
- :mod:`loaders.sources`: the shard readers behind them and batch assembly into one buffer.
- :class:`ShardCache` (:mod:`loaders.cache`): decoded shards shared by the node's processes,
  filled ahead of use by the dataset's prefetch threads.
- :mod:`loaders.dali`: DALI pipelines over the same batches (``dali_pipeline``, ``DaliLoader``)
  and the GPU-direct numpy-reader path (``numpy_reader_pipeline``).

torchdata's ``StatefulDataLoader`` works over :class:`StreamingDataset` too (same worker count
on resume, its rule); :class:`StatefulLoader` resumes at any count.
"""

from typing import Any

from loaders.cache import ShardCache
from loaders.plan import POLICIES, BatchPlan, EpochOrder, LoaderState, Policy, shuffle_quality

__all__ = [
    "POLICIES",
    "BatchPlan",
    "EpochOrder",
    "LoaderState",
    "Policy",
    "ShardCache",
    "StatefulLoader",
    "StreamingDataset",
    "shuffle_quality",
]


def __getattr__(name: str) -> Any:
    # The PyTorch-facing classes import torch: only when asked for.
    if name in ("StreamingDataset", "StatefulLoader"):
        from loaders import streaming

        return getattr(streaming, name)
    raise AttributeError(f"module 'loaders' has no attribute {name!r}")
