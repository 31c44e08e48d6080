"""task mAIstro: the ToDo assistant of LangGraph Academy's memory and deployment lessons.

It keeps three memories per user in the long-term Store: a profile, a ToDo list and the
user's instructions for managing it. The chat model decides, with the ``UpdateMemory`` tool,
which of them a message should update. Nodes are plain ``def``s using the sync Store API, as
in the lesson. The lesson extracts memories with trustcall; here the model's structured
output does it, so the graph runs on the offline model with no key (``model="offline"``, the
default) or on a hosted one (``config.configurable.model = "openai:gpt-4o"`` with the
``openai`` extra installed).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, Optional

from langchain_core.messages import SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.store.base import BaseStore
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from task_maistro.configuration import Configuration
from task_maistro.offline_model import OfflineChatModel


class Profile(BaseModel):
    """This is the profile of the user you are chatting with."""

    name: Optional[str] = Field(description="The user's name", default=None)
    location: Optional[str] = Field(description="The user's location", default=None)
    job: Optional[str] = Field(description="The user's job", default=None)
    connections: list[str] = Field(description="Personal connection of the user", default_factory=list)
    interests: list[str] = Field(description="Interests that the user has", default_factory=list)


class ToDo(BaseModel):
    task: str = Field(description="The task to be completed.")
    time_to_complete: Optional[int] = Field(description="Estimated time to complete the task (minutes).", default=None)
    deadline: Optional[datetime] = Field(description="When the task needs to be completed by (if applicable)", default=None)
    solutions: list[str] = Field(description="Specific, actionable solutions.", default_factory=list)
    status: Literal["not started", "in progress", "done", "archived"] = Field(default="not started")


class UpdateMemory(TypedDict):
    """Decision on what memory type to update."""

    update_type: Literal["user", "todo", "instructions"]


MODEL_SYSTEM_MESSAGE = """{task_maistro_role}

You have a long term memory which keeps track of three things:
1. The user's profile (general information about them)
2. The user's ToDo list
3. General instructions for updating the ToDo list

Here is the current User Profile (may be empty if no information has been collected yet):
<user_profile>
{user_profile}
</user_profile>

Here is the current ToDo List (may be empty if no tasks have been added yet):
<todo>
{todo}
</todo>

Here are the current user-specified preferences for updating the ToDo list (may be empty if no preferences have been specified yet):
<instructions>
{instructions}
</instructions>

Decide with the UpdateMemory tool whether to update the profile, the ToDo list or the
instructions; tell the user when you update the ToDo list; otherwise respond naturally."""

EXTRACT_INSTRUCTION = "Reflect on the conversation and extract the {kind} the user just mentioned. Current time: {time}."


def chat_model(configurable: Configuration):
    if configurable.model == "offline":
        return OfflineChatModel(delay=configurable.model_delay)
    from langchain.chat_models import init_chat_model  # the optional provider extra

    return init_chat_model(configurable.model)


def _namespaces(config: RunnableConfig) -> tuple[Configuration, dict[str, tuple[str, ...]]]:
    c = Configuration.from_runnable_config(config)
    return c, {kind: (kind, c.todo_category, c.user_id) for kind in ("profile", "todo", "instructions")}


def task_mAIstro(state: MessagesState, config: RunnableConfig, store: BaseStore) -> dict:
    """Answer the user, and decide which memory their message should update."""
    configurable, ns = _namespaces(config)
    profile = store.search(ns["profile"])
    todos = store.search(ns["todo"])
    instructions = store.search(ns["instructions"])
    system_msg = MODEL_SYSTEM_MESSAGE.format(
        task_maistro_role=configurable.task_maistro_role,
        user_profile=profile[0].value if profile else None,
        todo="\n".join(f"- {t.value['task']} ({t.value['status']})" for t in todos),
        instructions=instructions[0].value.get("memory", "") if instructions else "",
    )
    model = chat_model(configurable).bind_tools([UpdateMemory], parallel_tool_calls=False)
    response = model.invoke([SystemMessage(content=system_msg)] + state["messages"])
    return {"messages": [response]}


def _extract(state: MessagesState, config: RunnableConfig, schema: type[BaseModel], kind: str) -> BaseModel:
    configurable = Configuration.from_runnable_config(config)
    instruction = EXTRACT_INSTRUCTION.format(kind=kind, time=datetime.now().isoformat())
    extractor = chat_model(configurable).with_structured_output(schema)
    # Without the last message: it is the tool call that asked for this update.
    return extractor.invoke([SystemMessage(content=instruction)] + state["messages"][:-1])


def _done(state: MessagesState, content: str) -> dict:
    tool_call = state["messages"][-1].tool_calls[0]
    return {"messages": [{"role": "tool", "content": content, "tool_call_id": tool_call["id"]}]}


def update_profile(state: MessagesState, config: RunnableConfig, store: BaseStore) -> dict:
    _, ns = _namespaces(config)
    profile = _extract(state, config, Profile, "profile information")
    store.put(ns["profile"], "user_profile", profile.model_dump(mode="json"))
    return _done(state, "updated profile")


def update_todos(state: MessagesState, config: RunnableConfig, store: BaseStore) -> dict:
    _, ns = _namespaces(config)
    todo = _extract(state, config, ToDo, "ToDo")
    store.put(ns["todo"], str(uuid.uuid4()), todo.model_dump(mode="json"))
    return _done(state, f"updated todos: added '{todo.task}'")


def update_instructions(state: MessagesState, config: RunnableConfig, store: BaseStore) -> dict:
    _, ns = _namespaces(config)
    request = next(m.content for m in reversed(state["messages"]) if m.type == "human")
    store.put(ns["instructions"], "user_instructions", {"memory": request})
    return _done(state, "updated instructions")


def route_message(state: MessagesState) -> Literal["update_todos", "update_instructions", "update_profile", "__end__"]:
    message = state["messages"][-1]
    if not message.tool_calls:
        return END
    kind = message.tool_calls[0]["args"]["update_type"]
    return {"user": "update_profile", "todo": "update_todos", "instructions": "update_instructions"}[kind]


builder = StateGraph(MessagesState)
builder.add_node(task_mAIstro)
builder.add_node(update_todos)
builder.add_node(update_profile)
builder.add_node(update_instructions)
builder.add_edge(START, "task_mAIstro")
builder.add_conditional_edges("task_mAIstro", route_message)
builder.add_edge("update_todos", "task_mAIstro")
builder.add_edge("update_profile", "task_mAIstro")
builder.add_edge("update_instructions", "task_mAIstro")
graph = builder.compile()
