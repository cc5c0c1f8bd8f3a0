"""Make the demo's document set for retrieval: the first documents of the cleaned demo corpus,
each given access groups by a simple rule (what a real corpus carries from its source system):
licence texts go to ``legal``, the rest to ``eng``, and every fifth document has none (public,
because the demo embeds with ``--public-by-default``).

Run: ``python examples/rag_docs.py CLEAN_DATASET OUTPUT_DATASET``
"""

from __future__ import annotations

import sys

import pyarrow as pa

from datastore import DatasetWriter, open_dataset


def main(source: str, output: str, limit: int = 60) -> None:
    docs = open_dataset(source).head(limit, columns=["id", "text"]).to_pylist()
    groups: list[list[str]] = []
    for i, doc in enumerate(docs):
        if i % 5 == 4:
            groups.append([])
        elif "licen" in doc["text"][:2000].lower():
            groups.append(["legal"])
        else:
            groups.append(["eng"])
    with DatasetWriter(output, shard_size=64 * 1024) as w:
        w.write(
            pa.table(
                {
                    "id": [d["id"] for d in docs],
                    "text": [d["text"][:2000] for d in docs],
                    "access_groups": pa.array(groups, pa.list_(pa.string())),
                }
            )
        )
    counts = {g: sum(1 for gs in groups if g in gs) for g in ("legal", "eng")}
    print(f"{output}: {len(docs)} documents, {counts} (+{sum(1 for g in groups if not g)} public)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
