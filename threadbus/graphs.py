"""Graphs declared in a ``langgraph.json``, the file LangGraph projects already have.

``graphs`` maps a graph id to ``./path/to/file.py:attr`` (relative to the json file) or
``package.module:attr``. The attribute is a compiled graph, a ``StateGraph`` (compiled here), or
a factory of any shape LangGraph Platform accepts: no parameter, the config, a
``langgraph_sdk.runtime.ServerRuntime`` (a parameter named ``runtime`` or annotated so), or both
``(config, runtime)``; sync or async; returning a graph or a context manager (sync or async, e.g.
``@contextlib.asynccontextmanager``) that yields one and stays open while the graph is used.

Factories are called for every use, as LangGraph Platform does: runs (``threads.create_run``, an
execution runtime with the run's ``context``) and reads (``threads.read`` for state and history,
``threads.update`` for state edits, ``assistants.read`` for graph and schemas; a read runtime).

:meth:`GraphRegistry.durability` is how a run that names no ``durability`` is checkpointed:
``"exit"`` for a graph whose every run is one superstep of one node (docs/durability.md), LangGraph's
default otherwise.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.constants import END, START
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel
from langgraph.types import Durability

# The SDK's own runtime classes, so factories narrowing with `runtime.execution_runtime` (an
# isinstance check in the SDK) see what they see on LangGraph Platform.
from langgraph_sdk.runtime import _ExecutionRuntime, _ReadRuntime

from threadbus.admission import assistant_id_for  # noqa: F401 - the gateway imports it from here


@dataclass
class GraphEntry:
    graph_id: str
    spec: str
    target: Any = None
    # Whether the graph (not a factory) runs one step of one node (one_step), once known.
    one_step: bool | None = None

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

    @contextlib.asynccontextmanager
    async def graph(
        self,
        graph_id: str,
        config: dict[str, Any] | None = None,
        *,
        access_context: str = "threads.create_run",
        store: Any = None,
        context: Any = None,
    ) -> AsyncIterator[Pregel]:
        """The compiled graph for one use (a factory is called for it, and what it opened is
        closed when the block ends)."""
        entry = self.entries[graph_id]
        async with contextlib.AsyncExitStack() as resources:
            target = entry.target
            if entry.is_factory:
                runtime = server_runtime(access_context, store=store, context=context)
                target = await _entered(target(*_factory_args(target, config or {}, runtime)), resources)
            if isinstance(target, StateGraph):
                target = target.compile()
            if not isinstance(target, Pregel):
                raise TypeError(f"graph {graph_id!r} resolved to {type(target).__name__}, not a LangGraph graph")
            yield target

    def durability(self, graph_id: str, graph: Pregel) -> Durability | None:
        """How a run of ``graph`` (the graph ``graph_id`` gave for the run) that names no durability
        is checkpointed: ``"exit"`` (one checkpoint, when the run ends or pauses) when every run is
        one step of one node, so that a run cut off anywhere is done again from its input, which
        is all a checkpoint stored before or during that step could have saved; None (LangGraph's
        default) otherwise. Decided once for a graph, and for every graph a factory builds."""
        entry = self.entries[graph_id]
        if entry.is_factory:
            return "exit" if one_step(graph) else None
        if entry.one_step is None:
            entry.one_step = one_step(graph)
        return "exit" if entry.one_step else None


def one_step(graph: Pregel) -> bool:
    """Whether every run of ``graph`` is exactly one superstep of real work: a graph built with
    ``StateGraph`` of one node, entered from START, that can go on only to END (no conditional
    edge, no ``Command`` destination but END in its return annotation) and runs no subgraph.
    What a node does without saying so (an unannotated ``Command(goto=...)``) cannot be seen."""
    builder = getattr(graph, "builder", None)
    if not isinstance(builder, StateGraph) or len(builder.nodes) != 1:
        return False
    (name, spec), = builder.nodes.items()
    if builder.branches or builder.waiting_edges or (START, name) not in builder.edges:
        return False
    ends = spec.ends.values() if isinstance(spec.ends, dict) else spec.ends or ()
    if not builder.edges <= {(START, name), (name, END)} or any(end != END for end in ends):
        return False
    node = graph.nodes.get(name)
    return node is not None and not node.subgraphs


def server_runtime(access_context: str, *, store: Any = None, context: Any = None, user: Any = None):
    """What LangGraph Platform passes a factory's ``runtime`` parameter: an execution runtime
    (with the run's context) for runs, a read runtime otherwise."""
    if access_context == "threads.create_run":
        return _ExecutionRuntime(access_context=access_context, user=user, store=store, context=context)
    return _ReadRuntime(access_context=access_context, user=user, store=store)


def _factory_args(factory: Any, config: dict[str, Any], runtime: Any) -> list[Any]:
    """One argument per positional parameter: the runtime for one named ``runtime`` or annotated
    with ``ServerRuntime``, the config for any other."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in inspect.signature(factory).parameters.values() if p.kind in positional]
    return [runtime if _wants_runtime(p) else config for p in params]


def _wants_runtime(param: inspect.Parameter) -> bool:
    annotation = param.annotation
    if param.name == "runtime":
        return True
    if isinstance(annotation, str):  # postponed annotations
        return "ServerRuntime" in annotation
    return "ServerRuntime" in repr(annotation) or (
        isinstance(annotation, type) and issubclass(annotation, (_ExecutionRuntime, _ReadRuntime))
    )


async def _entered(made: Any, resources: contextlib.AsyncExitStack) -> Any:
    """What a factory's result stands for: awaited, and a context manager (or generator) entered."""
    if inspect.isawaitable(made):
        made = await made
    if inspect.isasyncgen(made):
        made = contextlib.asynccontextmanager(lambda: made)()
    elif inspect.isgenerator(made):
        made = contextlib.contextmanager(lambda: made)()
    if hasattr(made, "__aenter__"):
        return await resources.enter_async_context(made)
    if hasattr(made, "__enter__") and hasattr(made, "__exit__"):
        return resources.enter_context(made)
    return made
