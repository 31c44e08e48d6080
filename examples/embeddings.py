"""The example graphs' store embedder: WordLlama, which runs on a CPU with no download.

WordLlama (MIT) ships its 256-dimension token embeddings and tokenizer in its wheel (33 MB), so
``make dev`` needs no network and no GPU: an embedding is an average of token vectors, good
enough for finding memories by topic, not a transformer. The model loads when this module is
imported (about 2 s, once, as the server starts), not in the first put: puts run the embedder
in worker threads, and a dozen of them loading it at once stalled the server.
"""

from __future__ import annotations

from pathlib import Path

import wordllama

# WordLlama looks for its packaged tokenizer under "tokenizer/" but ships it in "tokenizers/",
# the layout of its cache directory: pointing the cache at the package finds both files there.
_MODEL = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent)


def embed(texts: list[str]) -> list[list[float]]:
    return _MODEL.embed(list(texts)).tolist()
