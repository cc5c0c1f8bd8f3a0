"""Registering a pipeline's output: lineage found from inputs, no duplicate on a rerun."""

from __future__ import annotations

from pathlib import Path

from pipelines.registration import register_output
from registry import Registry


def test_a_rerun_does_not_register_the_same_output_twice(tmp_path: Path) -> None:
    db, blobs = str(tmp_path / "r.db"), str(tmp_path / "b")
    reg = Registry(db, blobs)
    reg.register("raw/docs", kind="dataset", dataset=("file:///in", 2))
    kw = {
        "output": ("file:///out", 1),
        "inputs": [("file:///in", 2)],
        "registry": db,
        "blobs": blobs,
    }
    first = register_output("data/clean", **kw)  # type: ignore[arg-type]
    assert first == ("data/clean:1", ["raw/docs:1"])
    assert register_output("data/clean", **kw) == first  # type: ignore[arg-type]
    assert [v.number for v in reg.versions("data/clean")] == [1]
    newer = register_output("data/clean", **{**kw, "output": ("file:///out", 2)})  # type: ignore[arg-type]
    assert newer[0] == "data/clean:2", "a new dataset version is a new registry version"
    assert reg.resolve("data/clean:2").dataset_version == 2
