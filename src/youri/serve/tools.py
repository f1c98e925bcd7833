"""Tool calls (``tools`` / ``tool_choice``) for models whose chat template renders tools in the Hermes
``<tool_call>`` format (Qwen2.5, Qwen3, Hermes): the request's tools are rendered by the model's own
template, ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks in the reply become OpenAI
``tool_calls`` (streamed: content streams until a block starts, the calls come as one delta at the end).
``tool_choice`` ``"required"`` or a named function is enforced during decoding (an llguidance grammar:
one call whose arguments validate against the function's ``parameters``). A template without tool
support (youri's own, Llama 2) answers 400: a tool request is never silently dropped.

User text stays text: the template renders content as text, so a message holding one of the tokenizer's
special or added tokens (``<|im_start|>``) is refused (400 naming the message) rather than tokenized into it.
"""

from __future__ import annotations

import json
import re
import uuid

from youri.serve.api import APIError
from youri.serve.stops import StopText

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_TOOLS = 128
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.S)


def supports_tools(tokenizer) -> bool:
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return "tools" in template and OPEN in template


def _bad(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def parse_tools(body: dict) -> tuple[list[dict] | None, str | dict]:
    """``(tools, tool_choice)`` checked: function tools with unique names, a choice among them."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none"):
            raise _bad("tool_choice", "'tool_choice' needs 'tools'")
        return None, "none"
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise _bad("tools", f"'tools' must be a list of at most {MAX_TOOLS} function tools")
    names = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise _bad(f"tools[{i}]", f'tools[{i}] must be {{"type": "function", "function": {{"name", ...}}}}')
        name = function.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name) or name in names:
            raise _bad(f"tools[{i}].function.name", f"tools[{i}].function.name must be a unique [A-Za-z0-9_-]{{1,64}}")
        if not isinstance(function.get("parameters", {}), dict):
            raise _bad(f"tools[{i}].function.parameters", f"tools[{i}].function.parameters must be a JSON Schema")
        names.append(name)
    choice = "auto" if choice is None else choice
    if isinstance(choice, dict):
        function = choice.get("function")
        if choice.get("type") != "function" or not isinstance(function, dict) or function.get("name") not in names:
            raise _bad("tool_choice", f"'tool_choice' must name one of the tools: {', '.join(names)}")
    elif choice not in ("none", "auto", "required"):
        raise _bad("tool_choice", '\'tool_choice\' must be none, auto, required or {"type": "function", ...}')
    return tools, choice


def render(tokenizer, messages: list, tools: list[dict]) -> list[int]:
    """Prompt ids from the model's own template with the tools in it."""
    if not supports_tools(tokenizer):
        raise APIError(
            400,
            "this model's chat template does not render tools (tool calls need a template in the <tool_call> "
            "format, e.g. Qwen3's)",
            param="tools",
            code="unsupported_parameter",
        )
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "'messages' must be a non-empty list")
    special = [t for t in tokenizer.get_added_vocab() if len(t) > 1]
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool"):
            raise _bad(f"messages[{i}]", f"messages[{i}] must be an object with role system, user, assistant or tool")
        content = message.get("content")
        if not (isinstance(content, str) or (content is None and message["role"] == "assistant")):
            raise _bad(f"messages[{i}].content", f"messages[{i}].content must be a string")
        for token in special:
            if content and token in content:
                raise _bad(f"messages[{i}].content", f"messages[{i}].content holds the special token {token!r}")
    text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _marker(tokenizer, text: str) -> str:
    """A marker in the grammar: its token (``<[id]>``) when the tokenizer has it as one added token, else text."""
    token = tokenizer.get_added_vocab().get(text)
    return f"<[{token}]>" if token is not None else json.dumps(text)


def grammar(tokenizer, tools: list[dict], choice: str | dict) -> str | None:
    """A Lark grammar (llguidance) for one forced call, or None when the model chooses."""
    if choice == "required":
        chosen = tools
    elif isinstance(choice, dict):
        chosen = [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
    else:
        return None
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["function"]["name"]},
                "arguments": t["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    schema = {"anyOf": calls} if len(calls) > 1 else calls[0]
    schema = {**schema, "x-guidance": {"whitespace_flexible": False}}  # compact JSON, as for response_format
    opening, closing = _marker(tokenizer, OPEN), _marker(tokenizer, CLOSE)
    return f'start: {opening} "\\n" call "\\n" {closing}\ncall: %json {json.dumps(schema)}'


def split_calls(text: str) -> tuple[str | None, list[dict]]:
    """``(content, tool_calls)``: the ``<tool_call>`` blocks that hold a call, and the text around them."""
    calls = []
    for block in BLOCK.findall(text):
        try:
            call = json.loads(block)
        except ValueError:
            continue
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            arguments = call.get("arguments", {})
            calls.append(
                {
                    "id": "call_" + uuid.uuid4().hex[:24],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
                }
            )
    if not calls:
        return text, []
    content = BLOCK.sub("", text).strip()
    return content or None, calls


class ToolStream:
    """A streamed choice's content until a ``<tool_call>`` starts; the rest is parsed at the end."""

    def __init__(self):
        self._cut, self._buffer = StopText([OPEN]), None

    def push(self, delta: str) -> str:
        if self._buffer is not None:
            self._buffer += delta
            return ""
        out = self._cut.push(delta)
        if self._cut.hit:
            self._buffer = OPEN + self._cut.rest
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """The content not yet streamed and the calls."""
        if self._buffer is None:
            return self._cut.flush(), []
        content, calls = split_calls(self._buffer)
        return ((content or ""), calls) if calls else (self._buffer, [])
