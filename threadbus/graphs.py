"""Graphs declared in a ``langgraph.json``, the file LangGraph projects already have.

``graphs`` maps a graph id to ``./path/to/file.py:attr`` (relative to the json file) or
``package.module:attr``. The attribute is a compiled graph, a ``StateGraph`` (compiled here), or
a factory that takes the run's config (sync or async) and returns one of those.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.graph import StateGraph
from langgraph.pregel import Pregel

from threadbus.admission import assistant_id_for  # noqa: F401 - the gateway imports it from here


@dataclass
class GraphEntry:
    graph_id: str
    spec: str
    target: Any = None

    @property
    def is_factory(self) -> bool:
        return not isinstance(self.target, (Pregel, StateGraph)) and callable(self.target)


class GraphRegistry:
    def __init__(self, config_path: str | Path):
        self.config_path = Path(config_path).resolve()
        raw = json.loads(self.config_path.read_text())
        self.root = self.config_path.parent
        self.raw = raw
        self.entries = {gid: GraphEntry(gid, spec if isinstance(spec, str) else spec["path"]) for gid, spec in raw.get("graphs", {}).items()}
        if str(self.root) not in sys.path:
            # Graph files import their sibling modules, as under `langgraph dev`.
            sys.path.insert(0, str(self.root))
        for entry in self.entries.values():
            entry.target = self.resolve(entry.spec)

    def resolve(self, spec: str) -> Any:
        """The object a langgraph.json spec (``./file.py:attr`` or ``module:attr``) names."""
        location, _, attr = spec.rpartition(":")
        if not location or not attr:
            raise ValueError(f"graph spec {spec!r} must look like './file.py:attr' or 'module:attr'")
        if location.endswith(".py") or location.startswith((".", "/")):
            path = (self.root / location).resolve()
            name = f"threadbus_graph_{path.stem}_{abs(hash(str(path)))}"
            module = sys.modules.get(name)
            if module is None:
                module_spec = importlib.util.spec_from_file_location(name, path)
                if module_spec is None or module_spec.loader is None:
                    raise ValueError(f"cannot load graph file {path}")
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[name] = module
                module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(location)
        try:
            return getattr(module, attr)
        except AttributeError:
            raise ValueError(f"{spec!r}: module has no attribute {attr!r}") from None

    def __contains__(self, graph_id: str) -> bool:
        return graph_id in self.entries

    def ids(self) -> list[str]:
        return list(self.entries)

    async def build(self, graph_id: str, config: dict[str, Any] | None = None) -> Pregel:
        """The compiled graph for one run (a factory is called with the run's config)."""
        target = self.entries[graph_id].target
        if self.entries[graph_id].is_factory:
            takes_config = len(inspect.signature(target).parameters) > 0
            target = target(config or {}) if takes_config else target()
            if inspect.isawaitable(target):
                target = await target
        if isinstance(target, StateGraph):
            target = target.compile()
        if not isinstance(target, Pregel):
            raise TypeError(f"graph {graph_id!r} resolved to {type(target).__name__}, not a LangGraph graph")
        return target
