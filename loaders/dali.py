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

:func:`numpy_reader_pipeline` is the GPU-direct path: ``fn.readers.numpy(device="gpu")`` reads
each sample's token row straight from the node cache's ``.npy`` shard files into GPU memory
(GPUDirect Storage where the host has it), in the dataset's order for this rank. The suite runs
it here with ``device="cpu"``; ``benchmarks/bench_dali_gpu.py`` measures the GPU path on a GPU
host against a raw read of the same files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from datastore.errors import InvalidInput
from loaders.sources import TokenSource
from loaders.streaming import StreamingDataset

__all__ = ["DaliLoader", "dali_pipeline", "numpy_reader_pipeline"]

#: Token outputs DALI can carry (dense, one row per sample; ``cu_seqlens`` spans the batch).
DALI_OUTPUTS = ("input_ids", "labels", "position_ids", "seq_lens")


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
        names = [o for o in src.outputs if o in DALI_OUTPUTS]
        if not names:
            raise InvalidInput(
                f"outputs={list(src.outputs)} of {dataset.uri} leave DALI nothing to carry: "
                f"add one of {', '.join(DALI_OUTPUTS)}"
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


# -- GPU-direct path ---------------------------------------------------------------------------
class _RowStarts:
    """``external_source`` callback for the numpy reader: the ROI start ``[row, 0]`` of each
    sample of DALI iteration ``i`` (the reader walks the file list in the same order)."""

    def __init__(self, rows: np.ndarray, batch_size: int) -> None:
        self.starts = np.stack([rows, np.zeros_like(rows)], axis=1).astype(np.int32)
        self.batch_size = batch_size

    def __call__(self, info: Any) -> list[np.ndarray]:
        lo = int(info.iteration) * self.batch_size
        if lo >= len(self.starts):
            raise StopIteration
        return list(self.starts[lo : lo + self.batch_size])


def numpy_reader_pipeline(
    dataset: StreamingDataset,
    *,
    device: str = "gpu",
    device_id: int | None = 0,
    num_threads: int = 4,
    use_o_direct: bool = False,
    prefetch_queue_depth: int = 2,
) -> tuple[Any, int]:
    """``(pipeline, samples)``: this rank's token rows for the rest of the epoch, read by
    ``fn.readers.numpy`` straight from the node cache's ``.npy`` shard files, one row per
    sample through a region of interest. With ``device="gpu"`` DALI reads them into GPU
    memory with GPUDirect Storage (cuFile) where the host has it, else through its own bounce
    buffer; ``device="cpu"`` (``device_id=None``) runs the same pipeline on the CPU.

    Rows, order, partitioning and position are the dataset's (shuffle, ranks, resume), so
    ``DaliLoader``-style counting resumes it; the shards this rank reads must fit in the cache
    at once (no ``cache_limit`` below the epoch's shards), as the reader holds their paths.
    The pipeline gives ``input_ids`` (``(seq_len,)`` per sample, widened to int64 on the
    pipeline's device after the read, which moves the stored uint16/uint32 bytes); position
    ids and labels come from the external-source path
    (:func:`dali_pipeline`) or are computed on the GPU. The last batch is padded with
    this rank's first rows to a full DALI batch: iterate ``samples`` samples (``size=`` of
    ``DALIGenericIterator`` with ``last_batch_policy=PARTIAL``)."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import pipeline_def

    src = dataset.source
    if len(dataset.sources) > 1 or not isinstance(src, TokenSource):
        raise InvalidInput(
            f"the numpy-reader path reads one packed token dataset; {dataset.uri} is "
            + ("a mixture" if len(dataset.sources) > 1 else "a table")
            + ": use dali_pipeline (external source)"
        )
    order = dataset.order()
    plan = dataset.plan()
    positions = [plan.positions(g)[0] for g in plan.batches(dataset.rank).tolist()]
    if not positions:
        raise InvalidInput(f"rank {dataset.rank} has no batches left in {dataset.uri}")
    pos = np.concatenate(positions)
    ids = np.concatenate([order.take(int(p), int(p) + 1) for p in pos]) if len(pos) else pos
    shards, rows = order.locate(ids)
    needed = np.unique(shards)
    limit = dataset.cache.limit_bytes
    row_bytes = src.packed.seq_len * src.packed.tokens.dtype.itemsize
    if limit is not None and int(src.sizes[needed].sum()) * row_bytes > limit:
        raise InvalidInput(
            f"the numpy-reader path needs this rank's {len(needed)} shards of {dataset.uri} "
            f"cached at once ({int(src.sizes[needed].sum()) * row_bytes:,} bytes), above "
            f"cache_limit={limit:,}: raise the limit or use dali_pipeline"
        )
    paths = {int(s): str(src.fetch(int(s), dataset.cache)[0]) for s in needed.tolist()}
    b = dataset.batch_size
    samples = len(rows)
    # a full last DALI batch: this rank's first rows again (the iterator drops them)
    again = np.resize(np.arange(samples), samples + (-samples % b))
    shards, rows = shards[again], rows[again]
    files = [paths[int(s)] for s in shards.tolist()]
    starts = _RowStarts(rows, b)
    seq_len = src.packed.seq_len

    @pipeline_def(
        batch_size=b,
        num_threads=num_threads,
        device_id=device_id,  # type: ignore[arg-type]  # None is DALI's CPU-only mode
        prefetch_queue_depth=prefetch_queue_depth,
    )
    def pipe() -> Any:
        start = fn.external_source(source=starts, batch=True, batch_info=True)
        rows_ = fn.readers.numpy(
            device=device,
            files=files,
            roi_start=start,
            roi_shape=[1, seq_len],
            random_shuffle=False,
            cache_header_information=True,
            use_o_direct=use_o_direct,
            name="tokens",
        )
        return fn.cast(fn.reshape(rows_, shape=[seq_len]), dtype=types.DALIDataType.INT64)

    pipeline = pipe()
    pipeline.build()  # type: ignore[no-untyped-call]
    return pipeline, samples
