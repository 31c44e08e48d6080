"""What a run of task mAIstro can be configured with (``config.configurable``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from langchain_core.runnables import RunnableConfig


@dataclass(kw_only=True)
class Configuration:
    user_id: str = "default-user"
    todo_category: str = "general"
    task_maistro_role: str = "You are a helpful task management assistant. You help you create, organize, and manage the user's ToDo list."
    # "offline" (a deterministic model, no key needed) or a provider's model, e.g. "openai:gpt-4o".
    model: str = "offline"
    # Seconds the offline model takes for an answer, like a real one; tool calls take a tenth.
    model_delay: float = 3.0

    @classmethod
    def from_runnable_config(cls, config: RunnableConfig | None = None) -> Configuration:
        configurable = (config or {}).get("configurable", {})
        values: dict[str, Any] = {
            f.name: os.environ.get(f.name.upper(), configurable.get(f.name)) for f in fields(cls) if f.init
        }
        return cls(**{k: v for k, v in values.items() if v is not None})
