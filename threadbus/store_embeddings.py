"""``store.index`` of ``langgraph.json``: which embedder, how many dimensions, which fields.

``embed`` is read as LangGraph reads it: a ``"./path.py:function"`` or ``"module:function"``
(sync or async, ``list[str] -> list[list[float]]``), or else a ``"provider:model"`` string for
LangChain's ``init_embeddings`` (the ``embeddings`` extra installs LangChain; the provider's
package is the user's). ``fields`` are LangGraph's JSON paths (default ``["$"]``, the whole
value); a put may name its own fields or ``index=False``. The texts of a put are extracted
exactly as LangGraph's ``InMemoryStore`` extracts them (one embedding per path, ``path.i`` per
element where a path selects several).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.embeddings import Embeddings
from langgraph.store.base.embed import ensure_embeddings, get_text_at_path, tokenize_path


@dataclass
class Embedder:
    embeddings: Embeddings
    dims: int
    fields: list[tuple[str, list[str] | str]]  # (path as written, tokenized; "$" stays "$")

    def texts(self, value: dict[str, Any], index: bool | list[str] | None) -> list[tuple[str, str]]:
        """(field, text) pairs to embed for a put of ``value`` with the put's ``index`` argument."""
        if index is False:
            return []
        paths = self.fields if index is None or index is True else _tokenized(index)
        found: list[tuple[str, str]] = []
        for path, tokens in paths:
            texts = get_text_at_path(value, tokens)
            if len(texts) > 1:
                found.extend((f"{path}.{i}", text) for i, text in enumerate(texts))
            elif texts:
                found.append((path, texts[0]))
        return found

    async def embed(self, value: dict[str, Any], index: bool | list[str] | None) -> dict[str, list[float]]:
        """One embedding per indexed field of ``value``, checked against ``dims``."""
        pairs = self.texts(value, index)
        if not pairs:
            return {}
        vectors = await self.embeddings.aembed_documents([text for _, text in pairs])
        for vector in vectors:
            self._check(vector)
        return {field: [float(x) for x in vector] for (field, _), vector in zip(pairs, vectors, strict=True)}

    async def embed_query(self, query: str) -> list[float]:
        vector = await self.embeddings.aembed_query(query)
        self._check(vector)
        return [float(x) for x in vector]

    def _check(self, vector) -> None:
        if len(vector) != self.dims:
            raise ValueError(f"store.index.embed returned {len(vector)} dimensions, store.index.dims says {self.dims}")


def load_embedder(index: dict[str, Any] | None, resolve: Callable[[str], Any]) -> Embedder | None:
    """The embedder ``store.index`` configures, or None without one. ``resolve`` turns a
    ``path.py:attr``/``module:attr`` spec into the object (the graph registry's resolver, so
    paths are relative to ``langgraph.json``)."""
    if not index:
        return None
    if "dims" not in index or "embed" not in index:
        raise ValueError("store.index needs both 'embed' and 'dims'")
    embed = index["embed"]
    if isinstance(embed, str) and _names_a_function(embed):
        embed = resolve(embed)
    fields = index.get("fields") or ["$"]
    try:
        embeddings = ensure_embeddings(embed)
    except ImportError as err:  # a provider string whose packages are not installed
        raise ValueError(
            f"store.index.embed {embed!r} needs LangChain and the provider's package (pip install 'threadbus[embeddings]'"
            f" and e.g. langchain-openai): {err}"
        ) from err
    return Embedder(embeddings, int(index["dims"]), _tokenized(fields))


def _tokenized(paths: list[str]) -> list[tuple[str, list[str] | str]]:
    # As LangGraph's InMemoryStore: "$" (the whole value) is not a path to tokenize.
    return [(p, tokenize_path(p)) if p != "$" else (p, p) for p in paths]


def _names_a_function(spec: str) -> bool:
    """A file path, or an importable module that has the attribute; anything else is a
    ``provider:model`` string (``openai:text-embedding-3-small``: the ``openai`` module exists
    but has no such attribute)."""
    location, _, attr = spec.rpartition(":")
    if location.endswith(".py") or location.startswith((".", "/")):
        return True
    try:
        if importlib.util.find_spec(location) is None:
            return False
    except (ImportError, ValueError):
        return False
    return callable(getattr(importlib.import_module(location), attr, None))
