"""NVIDIA DALI pipelines over a :class:`~loaders.streaming.StreamingDataset`.

``dali_pipeline(ds)`` builds a pipeline whose ``fn.external_source`` asks the dataset for this
rank's batch number ``i`` (:meth:`StreamingDataset.batch_at`), so it gets the same shuffle,
partitioning and exactly-once guarantees as the PyTorch path, and works in DALI's parallel mode
(the source is a picklable callable computing any batch on its own, from the node cache and
``s3://`` alike). ``device_id=None`` runs on the CPU (what the test suite does here); with a
GPU id the outputs are copied to the GPU by DALI. :class:`DaliLoader` iterates it like a
DataLoader (``DALIGenericIterator``: dicts of torch tensors) and keeps the position for
``state_dict()`` / ``load_state_dict()``.

Token datasets give ``input_ids``, ``labels``, ``position_ids`` and ``seq_lens`` (those of
them the dataset's ``outputs=`` names; ``cu_seqlens`` spans a batch, not a sample); table
datasets give their numeric columns (DALI has no string tensors: pick them with ``columns=``).

Not done yet (see the Loaders issue): the GPUDirect Storage path with
``fn.readers.numpy(device="gpu")`` and its benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from datastore.errors import InvalidInput
from loaders.sources import TokenSource
from loaders.streaming import StreamingDataset

__all__ = ["DaliLoader", "dali_pipeline"]

#: Token outputs DALI can carry (dense, one row per sample; ``cu_seqlens`` spans the batch).
TOKEN_OUTPUTS = ("input_ids", "labels", "position_ids", "seq_lens")


class _BatchSource:
    """``external_source`` callback: DALI iteration ``i`` -> this rank's batch ``i``."""

    def __init__(self, dataset: StreamingDataset, names: Sequence[str]) -> None:
        self.dataset = dataset
        self.names = list(names)

    def __call__(self, info: Any) -> tuple[np.ndarray, ...]:
        batch = self.dataset.batch_at(int(info.iteration))  # StopIteration ends the epoch
        # one dense array per output (batch first): DALI's batches get the PyTorch path's shapes
        return tuple(np.ascontiguousarray(batch[name]) for name in self.names)


def output_names(dataset: StreamingDataset) -> list[str]:
    """What the pipeline returns for ``dataset``."""
    import pyarrow as pa

    src = dataset.source
    if isinstance(src, TokenSource):
        names = [o for o in src.outputs if o in TOKEN_OUTPUTS]
        if not names:
            raise InvalidInput(
                f"outputs={list(src.outputs)} of {dataset.uri} leave DALI nothing to carry: "
                f"add one of {', '.join(TOKEN_OUTPUTS)}"
            )
        return names
    names = [
        f.name for f in src.schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
    ]
    if not names:
        raise InvalidInput(
            f"{dataset.uri} has no numeric columns for DALI (it has {src.schema.names}); "
            "DALI carries tensors, not strings"
        )
    return names


def dali_pipeline(
    dataset: StreamingDataset,
    *,
    num_threads: int = 2,
    device_id: int | None = None,
    parallel: bool = False,
    py_num_workers: int = 2,
    prefetch_queue_depth: int = 2,
) -> Any:
    """A built DALI pipeline producing ``dataset``'s batches for this rank (CPU when
    ``device_id`` is None). ``parallel`` runs the source in ``py_num_workers`` processes."""
    from nvidia.dali import fn
    from nvidia.dali.pipeline import pipeline_def

    names = output_names(dataset)
    source = _BatchSource(dataset, names)

    @pipeline_def(
        batch_size=dataset.batch_size,
        num_threads=num_threads,
        device_id=device_id,  # type: ignore[arg-type]  # None is DALI's CPU-only mode
        py_num_workers=py_num_workers if parallel else 1,
        py_start_method="spawn",
        prefetch_queue_depth=prefetch_queue_depth,
    )
    def pipe() -> Any:
        outs = fn.external_source(
            source=source,
            num_outputs=len(names),
            batch=True,
            batch_info=True,
            parallel=parallel,
        )
        if device_id is not None:
            outs = [o.gpu() for o in outs]
        return tuple(outs)

    pipeline = pipe()
    pipeline.build()  # type: ignore[no-untyped-call]
    return pipeline


class DaliLoader:
    """Iterate a DALI pipeline over ``dataset`` like a DataLoader (dicts of torch tensors),
    keeping the position for ``state_dict()`` / ``load_state_dict()``."""

    def __init__(self, dataset: StreamingDataset, **pipeline_kwargs: Any) -> None:
        self.dataset = dataset
        self.kwargs = pipeline_kwargs
        self.steps = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        names = output_names(self.dataset)
        pipeline = dali_pipeline(self.dataset, **self.kwargs)
        self.steps = 0
        for out in DALIGenericIterator([pipeline], names):
            self.steps += 1
            yield out[0]
        self.dataset.set_epoch(self.dataset.epoch + 1)
        self.steps = 0

    def state_dict(self) -> dict[str, Any]:
        """Where the run stands (any world size or batch size can resume it)."""
        return self.dataset.state_dict(self.steps)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``."""
        self.dataset.load_state_dict(state)
        self.steps = 0
