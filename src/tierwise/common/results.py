"""The Python API's result objects: plain dataclasses with `.as_dict()` and `.to_dataframe()` (docs/python-api.md).

A result says which of its fields are its table (`_rows`: a list of dicts, one per run, design, layer, ...); a result
without one is a single row of its scalar fields. pandas is optional: `pip install pandas` for `.to_dataframe()`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tierwise.common.errors import TierwiseError
from tierwise.common.report import to_jsonable


class Result:
    """Mix into a dataclass: `as_dict()` gives JSON-ready plain types, `to_dataframe()` its rows as a DataFrame."""

    _rows: ClassVar[str | None] = None  # name of the field holding the table, if any

    def as_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def rows(self) -> list[dict[str, Any]]:
        if self._rows is not None:
            return [dict(r) for r in to_jsonable(getattr(self, self._rows))]
        flat = {k: v for k, v in self.as_dict().items() if not isinstance(v, (dict, list))}
        return [flat]

    def to_dataframe(self):
        try:
            import pandas as pd
        except ImportError:
            raise TierwiseError("to_dataframe() needs pandas: pip install pandas (or use .as_dict())") from None
        return pd.DataFrame(self.rows())

