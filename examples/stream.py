"""Stream batches from the demo's datasets the way a training loop would: packed token rows
and text rows, two DataLoader workers, then a checkpoint of the loader's position.

Run by `make demo`: ``python examples/stream.py TOKENS_URI TABLE_URI``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from loaders import StatefulLoader, StreamingDataset


def stream(uri: str, batches: int, **kwargs: Any) -> None:
    ds = StreamingDataset(uri, batch_size=8, seed=0, **kwargs)
    loader = StatefulLoader(ds, num_workers=2)
    start = time.perf_counter()
    first = None
    taken = samples = 0
    shapes = ""
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
            shapes = ", ".join(
                f"{k} {tuple(v.shape) if hasattr(v, 'shape') else f'list[{len(v)}]'}"
                for k, v in batch.items()
            )
        taken += 1
        samples += len(next(iter(batch.values())))
        if taken == batches:
            break
    elapsed = time.perf_counter() - start
    print(f"{uri}: {len(ds):,} samples; first batch after {first or 0:.2f} s: {shapes}")
    print(f"  {taken} batches, {samples / elapsed:,.0f} samples/s (incl. worker start-up)")
    print(f"  checkpoint: {loader.state_dict()}")


if __name__ == "__main__":
    tokens, table = sys.argv[1], sys.argv[2]
    stream(tokens, 20)
    stream(table, 10, columns=["id", "text"])
