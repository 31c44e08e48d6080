"""A chat model that needs no key: langchain-core's fake chat model answering by simple rules.

It plays the part the lesson gives to an LLM, deterministically:

- with the ``UpdateMemory`` tool bound, a question (a summary, a list, "never mind") gets a
  plain answer that lists the user's ToDos, as does the turn after a memory update; a message
  about the user (``my name is``, ``I live in``) gets ``UpdateMemory(update_type="user")``,
  one about how to manage ToDos ``"instructions"``, and any other statement is a task:
  ``"todo"``;
- with a schema bound as structured output (``ToDo``, ``Profile``), it fills the schema from
  the last human message.

Answers stream token by token and take ``delay`` seconds, like a hosted model would.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

_QUESTION = re.compile(r"\?|\b(summary|summari[sz]e|what|which|show|list|how many|never mind)\b", re.I)
_USER = re.compile(r"\b(my name is|i live in|i am|i'm|i work)\b", re.I)
_INSTRUCTIONS = re.compile(r"\b(when you|always|prefer|instructions?)\b", re.I)


def _last_human(messages: list[BaseMessage]) -> str:
    return next((m.content for m in reversed(messages) if isinstance(m, HumanMessage)), "")


def _section(messages: list[BaseMessage], tag: str) -> str:
    system = next((m.content for m in messages if isinstance(m, SystemMessage)), "")
    found = re.search(rf"<{tag}>(.*?)</{tag}>", system, re.S)
    return found.group(1).strip() if found else ""


def _task(text: str) -> str:
    """"Add a ToDo to call the salon." -> "Call the salon"; any other sentence is the task itself."""
    task = re.sub(r"^.*?\bto-?do\b\s*(to|:)?\s*", "", text, flags=re.I).strip().rstrip(".")
    return task[:1].upper() + task[1:] if task else text


class OfflineChatModel(GenericFakeChatModel):
    messages: Any = iter(())  # unused: the rules decide each answer
    tool_names: tuple[str, ...] = ()
    delay: float = 0.0

    def bind_tools(self, tools, **kwargs):
        names = tuple(convert_to_openai_tool(t)["function"]["name"] for t in tools)
        return self.model_copy(update={"tool_names": names})

    def _answer(self, messages: list[BaseMessage]) -> AIMessage:
        text = _last_human(messages)
        if "ToDo" in self.tool_names:
            return self._call("ToDo", {"task": _task(text), "time_to_complete": 30, "solutions": [], "status": "not started"})
        if "Profile" in self.tool_names:
            name = re.search(r"my name is (\w+)", text, re.I)
            place = re.search(r"i live in ([\w ]+)", text, re.I)
            return self._call("Profile", {"name": name and name.group(1), "location": place and place.group(1).strip()})
        after_update = isinstance(messages[-1], ToolMessage)
        if "UpdateMemory" in self.tool_names and not after_update:
            # Questions are answered; anything else the user tells is a memory, by default a task.
            if not _QUESTION.search(text):
                kind = "user" if _USER.search(text) else "instructions" if _INSTRUCTIONS.search(text) else "todo"
                return self._call("UpdateMemory", {"update_type": kind})
        todos = _section(messages, "todo") or "(none yet)"
        opening = "Done, I updated your memory." if after_update else f"About '{text}':"
        return AIMessage(content=f"{opening} Here is your ToDo list:\n{todos}", id=f"ai-{uuid.uuid4()}")

    @staticmethod
    def _call(name: str, args: dict) -> AIMessage:
        return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call-{uuid.uuid4().hex[:12]}"}])

    def _wait(self, message: AIMessage) -> float:
        return self.delay / 10 if message.tool_calls else self.delay

    @staticmethod
    def _chunks(message: AIMessage) -> list[ChatGenerationChunk]:
        """The answer as a hosted model streams it: word by word, or one tool-call chunk."""
        if message.tool_calls:
            call = message.tool_calls[0]
            chunk = AIMessageChunk(
                content="",
                id=message.id,
                tool_call_chunks=[{"name": call["name"], "args": json.dumps(call["args"]), "id": call["id"], "index": 0}],
            )
            return [ChatGenerationChunk(message=chunk)]
        words = re.split(r"(\s+)", message.content)
        return [ChatGenerationChunk(message=AIMessageChunk(content=w, id=message.id)) for w in words if w]

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        message = self._answer(messages)
        time.sleep(self._wait(message))
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        message = self._answer(messages)
        await asyncio.sleep(self._wait(message))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages, stop=None, run_manager=None, **kwargs) -> Iterator[ChatGenerationChunk]:
        message = self._answer(messages)
        chunks = self._chunks(message)
        for chunk in chunks:
            time.sleep(self._wait(message) / len(chunks))
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(self, messages, stop=None, run_manager=None, **kwargs) -> AsyncIterator[ChatGenerationChunk]:
        message = self._answer(messages)
        chunks = self._chunks(message)
        for chunk in chunks:
            await asyncio.sleep(self._wait(message) / len(chunks))
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
