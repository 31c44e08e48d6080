"""What a subscriber asked for: channels, namespace prefixes and depth, checked and matched.

Matching is the SDK's own (``langgraph_sdk.stream.subscription``), so the server delivers
exactly what the client's fan-out expects: channel = method (``input.requested`` is ``input``,
``custom`` is also ``custom:<name>``), a namespace prefix matches segment by segment, a segment
without ``:`` also matching an event segment up to its ``:suffix``, and ``depth`` bounds how far
below the prefix an event may be.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from langgraph_sdk.stream.subscription import matches_subscription

CHANNELS = frozenset({"values", "updates", "messages", "tools", "lifecycle", "input", "checkpoints", "tasks", "custom"})


class InvalidFilter(ValueError):
    """A subscription the protocol does not allow; the message says why."""


@dataclass(frozen=True)
class Filter:
    channels: tuple[str, ...]
    namespaces: tuple[tuple[str, ...], ...] | None = None
    depth: int | None = None

    @property
    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"channels": list(self.channels)}
        if self.namespaces is not None:
            params["namespaces"] = [list(ns) for ns in self.namespaces]
        if self.depth is not None:
            params["depth"] = self.depth
        return params

    def matches(self, method: str, namespace: list[str], custom_name: Any = None) -> bool:
        return _matches(self, method, tuple(namespace), custom_name if isinstance(custom_name, str) else None)


@functools.lru_cache(maxsize=4096)
def _matches(wanted: Filter, method: str, namespace: tuple[str, ...], custom_name: str | None) -> bool:
    # A stream's events have few distinct (method, namespace, name) keys: each is decided once.
    data = {"name": custom_name} if custom_name else {}
    event = {"method": method, "params": {"namespace": list(namespace), "data": data}}
    return matches_subscription(event, wanted.params)


def parse(body: Any) -> Filter:
    """A subscription from a request body or command params (``channels`` required)."""
    if not isinstance(body, dict):
        raise InvalidFilter("the subscription must be a JSON object")
    channels = body.get("channels")
    if not isinstance(channels, list) or not channels:
        raise InvalidFilter("channels must be a non-empty list")
    for channel in channels:
        if not isinstance(channel, str) or not (channel in CHANNELS or (channel.startswith("custom:") and len(channel) > 7)):
            raise InvalidFilter(f"unknown channel {channel!r}; channels are {sorted(CHANNELS)} or custom:<name>")
    namespaces = body.get("namespaces")
    if namespaces is not None:
        if not isinstance(namespaces, list) or not all(
            isinstance(ns, list) and all(isinstance(seg, str) for seg in ns) for ns in namespaces
        ):
            raise InvalidFilter("namespaces must be a list of lists of strings")
        namespaces = tuple(tuple(ns) for ns in namespaces)
    depth = body.get("depth")
    if depth is not None and (not _is_int(depth) or depth < 0):
        raise InvalidFilter("depth must be a non-negative integer")
    return Filter(channels=tuple(channels), namespaces=namespaces, depth=depth)


def parse_since(body: dict[str, Any], *, required: bool = False) -> int | None:
    since = body.get("since")
    if since is None:
        if required:
            raise InvalidFilter("since is required")
        return None
    if not _is_int(since) or since < 0:
        raise InvalidFilter("since must be a non-negative integer (the highest seq already seen)")
    return since


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
