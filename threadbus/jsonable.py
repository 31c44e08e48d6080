"""JSON for graph values, as LangGraph Platform renders them (messages as their model dump)."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from pydantic import BaseModel


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "_asdict"):
        return obj._asdict()
    if isinstance(obj, bytes):
        return obj.decode(errors="replace")
    return str(obj)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS)


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (dicts, lists, strings, numbers, booleans, None)."""
    return orjson.loads(dumps(obj))
