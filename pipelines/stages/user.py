"""User stages: a function of the user's, named ``"package.module:function"`` in the config.

The function must be importable on every worker. ``mode = "document"`` calls it once per
document with the record as a dict (every column but ``_ord``); ``mode = "batch"`` calls it once
with the batch as a :class:`pyarrow.Table`. See :class:`~pipelines.config.UserStageConfig`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datastore.errors import InvalidInput
from pipelines.config import UserStageConfig
from pipelines.stages.base import Stage, StageOutput, drop_table

__all__ = ["UserStage", "load_function"]


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def load_function(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` (the part after ``:`` may be dotted, e.g.
    ``Class.method``); raises :class:`InvalidInput` naming the function and the fix."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInput(
            f"user stage function {spec!r} must be written 'package.module:function'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # any import-time failure of user code
        raise InvalidInput(
            f"user stage function {spec!r}: cannot import module {module_name!r} "
            f"({_one_line(err)}); install it on every worker or fix the name"
        ) from err
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidInput(
                f"user stage function {spec!r}: module {module_name!r} has no {attr!r}; "
                "check the name after ':'"
            ) from None
    if not callable(obj):
        raise InvalidInput(
            f"user stage function {spec!r} is a {type(obj).__name__}, not a function; "
            "point it at a callable"
        )
    return obj  # type: ignore[no-any-return]


class UserStage(Stage):
    """Run a user function per document or per batch (see the module doc).

    Document mode: ``fn(record, **options)`` returns the new record (a dict: its fields become
    the row's, so return the record you were given, modified, to keep the other columns; new
    keys become new columns) or None to drop the document. Batch mode: ``fn(table, **options)``
    returns a table that keeps ``_ord`` and ``text`` for the rows that survive, in their input
    order; rows whose ``_ord`` is gone are dropped. Either way a drop's reason is
    ``user:<name>``, and an exception from the function becomes :class:`InvalidInput` naming the
    stage.
    """

    name = "user"

    def __init__(self, config: UserStageConfig) -> None:
        if config.mode not in ("document", "batch"):
            raise InvalidInput(
                f"user stage {config.function!r}: mode must be 'document' or 'batch', "
                f"not {config.mode!r}"
            )
        self.config = config
        self.function = load_function(config.function)
        # Base declares ``name`` as a class attribute; a user stage is named per instance.
        self.name = config.name or config.function.rpartition(":")[2].rpartition(".")[2]  # type: ignore[misc]

    def apply(self, table: pa.Table) -> StageOutput:
        """Run the function on one batch; keeps input order and ``_ord``."""
        if table.num_rows == 0:
            return StageOutput(table)
        if self.config.mode == "document":
            return self._per_document(table)
        return self._per_batch(table)

    def _fail(self, err: Exception, where: str = "") -> InvalidInput:
        return InvalidInput(
            f"user stage {self.name!r} ({self.config.function}) failed{where}: {_one_line(err)}"
        )

    def _per_document(self, table: pa.Table) -> StageOutput:
        options = self.config.options
        ords = table.column("_ord").to_pylist()
        records = table.drop_columns(["_ord"]).to_pylist()
        kept_ords: list[int] = []
        kept: list[Mapping[str, Any]] = []
        dropped: list[int] = []
        for ord_, record in zip(ords, records, strict=True):
            try:
                result = self.function(record, **options)
            except Exception as err:
                raise self._fail(err, f" on document _ord={ord_}") from err
            if result is None:
                dropped.append(ord_)
                continue
            if not isinstance(result, Mapping):
                raise InvalidInput(
                    f"user stage {self.name!r} ({self.config.function}) returned a "
                    f"{type(result).__name__} for document _ord={ord_}; return a dict or None"
                )
            kept_ords.append(ord_)
            kept.append(result)
        out = self._rows_to_table(table.schema, kept_ords, kept)
        return StageOutput(out, self._drops(dropped))

    def _rows_to_table(
        self, schema: pa.Schema, ords: list[int], rows: list[Mapping[str, Any]]
    ) -> pa.Table:
        """Columns in order of first appearance (``_ord`` first); a key a row lacks is null; a
        column keeps its input type when the new values fit it."""
        names: dict[str, None] = {}
        for row in rows:
            names.update(dict.fromkeys(k for k in row if k != "_ord"))
        if not rows:
            names = dict.fromkeys(n for n in schema.names if n != "_ord")
        arrays = [pa.array(ords, pa.uint64())]
        fields = [schema.field("_ord")]
        for name in names:
            values = [row.get(name) for row in rows]
            arr: pa.Array | None = None
            if name in schema.names:
                try:
                    arr = pa.array(values, schema.field(name).type)
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                    arr = None
            if arr is None:
                try:
                    arr = pa.array(values)
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as err:
                    raise InvalidInput(
                        f"user stage {self.name!r} ({self.config.function}) returned values "
                        f"for {name!r} that do not form one column: {_one_line(err)}"
                    ) from None
            arrays.append(arr)
            fields.append(pa.field(name, arr.type))
        out = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        self._check_text(out)
        return out

    def _check_text(self, out: pa.Table) -> None:
        if "text" not in out.column_names:
            raise InvalidInput(
                f"user stage {self.name!r} ({self.config.function}) removed the 'text' field; "
                "keep it in what the function returns"
            )
        typ = out.schema.field("text").type
        if out.num_rows and not (
            pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_null(typ)
        ):
            raise InvalidInput(
                f"user stage {self.name!r} ({self.config.function}) made 'text' a {typ}; "
                "it must stay a string"
            )

    def _per_batch(self, table: pa.Table) -> StageOutput:
        try:
            out = self.function(table, **self.config.options)
        except Exception as err:
            raise self._fail(err) from err
        if not isinstance(out, pa.Table):
            raise InvalidInput(
                f"user stage {self.name!r} ({self.config.function}) returned a "
                f"{type(out).__name__}; return a pyarrow.Table"
            )
        if "_ord" not in out.column_names:
            raise InvalidInput(
                f"user stage {self.name!r} ({self.config.function}) removed the '_ord' column; "
                "keep it for the rows that survive"
            )
        self._check_text(out)
        ords_in = table.column("_ord").combine_chunks()
        try:
            ords_out = out.column("_ord").combine_chunks().cast(pa.uint64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise self._fail(err, " (its '_ord' column is not an integer)") from None
        where = pc.index_in(ords_out, value_set=ords_in)
        if where.null_count:
            raise InvalidInput(
                f"user stage {self.name!r} ({self.config.function}) returned rows whose '_ord' "
                "is not in its input; keep '_ord' as it was and do not add rows"
            )
        positions = where.to_numpy(zero_copy_only=False)
        if len(np.unique(positions)) != len(positions):
            raise InvalidInput(
                f"user stage {self.name!r} ({self.config.function}) returned a row twice; "
                "each input row may be kept once or dropped"
            )
        if np.any(np.diff(positions) < 0):  # restore the input order
            order = np.argsort(positions, kind="stable")
            out, positions = out.take(pa.array(order)), positions[order]
        if out.schema.field("_ord").type != pa.uint64():
            column = out.schema.get_field_index("_ord")
            field = pa.field("_ord", pa.uint64(), nullable=False)
            out = out.set_column(column, field, out.column("_ord").cast(pa.uint64()))
        gone = np.ones(table.num_rows, dtype=np.bool_)
        gone[positions] = False
        dropped = ords_in.filter(pa.array(gone)).to_pylist()
        return StageOutput(out, self._drops(dropped))

    def _drops(self, ords: list[int]) -> pa.Table:
        reason = f"user:{self.name}"
        return drop_table(pa.array(ords, pa.uint64()), [reason] * len(ords))
