"""``store.index`` as LangGraph reads it: which embedder a spec names, and what a put embeds."""

from __future__ import annotations

import pytest

from threadbus.graphs import GraphRegistry
from threadbus.store_embeddings import load_embedder
from tests.support import TEST_GRAPHS

RESOLVE = GraphRegistry(TEST_GRAPHS).resolve  # langgraph.json's resolver: paths relative to it, or modules


async def aembed(texts: list[str]) -> list[list[float]]:
    return [[float(len(t)), 1.0] for t in texts]


async def test_a_module_function_sync_or_async_embeds():
    sync = load_embedder({"embed": "tests.graphs.embeddings:embed", "dims": 8}, RESOLVE)
    assert len(await sync.embed_query("pizza")) == 8
    async_ = load_embedder({"embed": f"{__name__}:aembed", "dims": 2}, RESOLVE)
    assert await async_.embed({"text": "abc"}, None) == {"$": [float(len('{"text": "abc"}')), 1.0]}  # the whole value as JSON


async def test_a_provider_string_goes_to_langchains_init_embeddings():
    # `openai` may be an importable module; it has no attribute by the model's name.
    with pytest.raises(ValueError, match="langchain"):
        load_embedder({"embed": "openai:text-embedding-3-small", "dims": 1536}, RESOLVE)


async def test_fields_a_puts_own_fields_and_index_false():
    embedder = load_embedder({"embed": f"{__name__}:aembed", "dims": 2, "fields": ["title", "tags[*]"]}, RESOLVE)
    value = {"title": "abc", "tags": ["x", "yz"], "body": "ignored"}
    assert embedder.texts(value, None) == [("title", "abc"), ("tags[*].0", "x"), ("tags[*].1", "yz")]
    assert embedder.texts(value, ["body"]) == [("body", "ignored")]
    assert embedder.texts(value, False) == [] and await embedder.embed(value, False) == {}


async def test_an_embedder_answering_other_dimensions_than_dims_is_refused():
    embedder = load_embedder({"embed": f"{__name__}:aembed", "dims": 3}, RESOLVE)
    with pytest.raises(ValueError, match="dims says 3"):
        await embedder.embed_query("x")
