"""Conversations for supervised fine-tuning: each example a list of turns, OpenAI's / HF's
{role, content} or ShareGPT's {from, value}. A chat template (Jinja, as HF tokenizers carry one)
writes a conversation as text; the model learns the assistant's turns and reads the rest.

The template is the tokenizer's own where it has one, else PLAIN; either way it is set on the run's
tokenizer, so every checkpoint (and an HF export) carries the template the model was trained with,
and `finetune.generate` writes prompts with it."""

from __future__ import annotations

import json
from bisect import bisect_left
from pathlib import Path

from pretrain.data.sources import DataError, column_values, rewritten

ROLES = ("system", "user", "assistant", "tool")
ALIASES = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}
"""ShareGPT's names, its function-calling layout's among them (a function_call turn's value is the call)."""
PLAIN = (
    "{% if tools %}{{ '<|tools|>\\n' + (tools | tojson) + eos_token }}{% endif %}"
    "{% for m in messages %}{% if tools or not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% for c in m['tool_calls'] or [] %}{% if m['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<tool_call>' + ({'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson)"
    " + '</tool_call>' }}{% endfor %}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{% if messages or tools %}{{ '\\n' }}{% endif %}{{ '<|assistant|>\\n' }}"
    "{% endif %}"
)
"""Each turn as <|role|>, a line break, its text and end-of-text (Zephyr's layout, with no tokens
added to the vocabulary): the model learns to end its turn with end-of-text, where sampling stops.
An assistant's tool calls follow its text, each as <tool_call>{"name": ..., "arguments": {...}}</tool_call>
on a line of its own; the tools a conversation may call come first, as a <|tools|> turn of their JSON."""


def turns(value) -> list[dict]:
    """A conversation as [{"role": ..., "content": ...}], or a ValueError saying what is wrong with
    it. Takes a list of turns or its JSON text (a table's cell); content may be text or a list of
    text parts ({"type": "text", "text": ...})."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"text that is not a JSON list of turns: {value[:40]!r}") from None
    if not isinstance(value, list) or not value:
        raise ValueError(f"{type(value).__name__} {str(value)[:40]!r}, not a list of turns")
    out = []
    for n, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {n} is {type(turn).__name__} {str(turn)[:40]!r}, not a turn ({{role, content}})")
        role = _first(turn, "role", "from")
        content = _first(turn, "content", "value")
        calls = turn.get("tool_calls") or None
        if role == "function_call" and content is not None:  # ShareGPT: the value is the call
            calls, content = [_parsed(content, f"turn {n}'s function call")], ""
        if role is None or (content is None and calls is None):
            raise ValueError(f"turn {n} has keys {sorted(k for k, v in turn.items() if v is not None)}; a turn needs a "
                             "role and its content ({role, content}, or ShareGPT's {from, value}; an assistant's "
                             "turn may have tool_calls instead)")  # fmt: skip
        role = ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise ValueError(f"turn {n} has role {role!r}; a role is one of {', '.join(ROLES)} (ShareGPT's human, "
                             "gpt, function_call and observation are read as user, assistant, assistant and tool)")
        said = {"role": role, "content": "" if content is None else _text(content, n)}
        if calls is not None:
            if role != "assistant":
                raise ValueError(f"turn {n} has tool_calls and role {role!r}; only the assistant calls tools")
            if not isinstance(calls, list):
                raise ValueError(f"turn {n} has tool_calls {str(calls)[:40]!r}, not a list of calls")
            said["tool_calls"] = [_call(c, f"turn {n}'s tool call {k}") for k, c in enumerate(calls)]
        if role == "tool":
            said.update({k: str(turn[k]) for k in ("tool_call_id", "name") if turn.get(k) is not None})
        out.append(said)
    return out


def _call(call, what: str) -> dict:
    """A tool call as HF chat templates take one: {"type": "function", "function": {"name", "arguments"
    (an object)}} (and its "id"), from OpenAI's layout or a bare {"name", "arguments"}; arguments
    given as JSON text are read."""
    if not isinstance(call, dict):
        raise ValueError(f"{what} is {type(call).__name__} {str(call)[:40]!r}, not a call ({{name, arguments}})")
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    name, arguments = function.get("name"), function.get("arguments")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} has no function name (keys {sorted(function)}); a call is {{name, arguments}} or "
                         "OpenAI's {type: function, function: {name, arguments}}")  # fmt: skip
    if isinstance(arguments, str):
        arguments = _parsed(arguments, f"{what}'s arguments") if arguments.strip() else {}
    if not isinstance(arguments, dict | None):
        raise ValueError(f"{what} has arguments {str(arguments)[:40]!r}, not an object of named arguments")
    done = {"type": "function", "function": {"name": name, "arguments": arguments or {}}}
    return {**({"id": str(call["id"])} if call.get("id") is not None else {}), **done}


def _parsed(text, what: str):
    """JSON text read (a ValueError naming ``what`` when it is not JSON); anything else as it is."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"{what} is not JSON: {text[:40]!r}") from None


def tool_list(value) -> list[dict] | None:
    """The tools a conversation may call (a list of JSON schemas, HF's {type: function, function:
    {name, description, parameters}} or a bare {name, ...}), or None for none; JSON text is read.
    A ValueError says what is wrong."""
    value = _parsed(value, "the tools") if isinstance(value, str) and value.strip() else value
    if value is None or value == "" or value == []:
        return None
    if not isinstance(value, list):
        raise ValueError(f"the tools are {type(value).__name__} {str(value)[:40]!r}, not a list of tool definitions")
    for k, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) and isinstance(tool.get("function"), dict) else tool
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f"tool {k} is {str(tool)[:60]!r}, not a tool definition (a JSON schema with a name: "
                             "{type: function, function: {name, description, parameters}})")  # fmt: skip
    return value


def _first(turn: dict, *keys):
    return next((turn[k] for k in keys if turn.get(k) is not None), None)


def _text(content, n: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, int | float) and not isinstance(content, bool):  # a number: its digits, as texts are read
        return str(content)
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text") or "") for p in content)
    parts = content if isinstance(content, list) else []
    kinds = sorted({str(p.get("type") or "?") for p in parts if isinstance(p, dict)})
    why = f"parts of type {kinds} (only text parts are read)" if kinds else f"{type(content).__name__}, not text"
    raise ValueError(f"turn {n} has content {why}")


def conversation_column(table, column: str, where: str):
    """``table`` with each conversation of ``column`` checked and written as the JSON text of its
    turns (one type for every source, and text that hold-out can hash); a null stays null. A
    DataError names the first example that is not a conversation."""
    written = []
    for i, value in enumerate(column_values(table, column)):
        try:
            written.append(None if value is None else json.dumps(turns(value), ensure_ascii=False))
        except ValueError as e:
            raise DataError(f"task.messages_column={column!r}: example {i} of {where} is not a conversation: "
                            f"{e}") from None  # fmt: skip
    return rewritten(table, {column: written})


def tools_column(table, column: str, where: str):
    """``table`` with each conversation's tools in ``column`` checked and written as JSON text (null:
    none). A DataError names the first example whose tools are not a list of tool definitions."""
    written = []
    for i, value in enumerate(column_values(table, column)):
        try:
            tools = tool_list(value)
        except ValueError as e:
            raise DataError(f"task.tools_column={column!r}: example {i} of {where}: {e}") from None
        written.append(None if tools is None else json.dumps(tools, ensure_ascii=False))
    return rewritten(table, {column: written})


def looks_like_conversations(table) -> str | None:
    """The name of a column whose first value is a list of turns (a hint for a missing prompt column)."""
    if not len(table):
        return None
    first = table[0]
    for column, value in first.items():
        if isinstance(value, list) and value and isinstance(value[0], dict) and (
                {"role", "from"} & {k for k, v in value[0].items() if v is not None}):  # fmt: skip
            return column
    return None


def chat_template(tok, setting: str) -> str:
    """The template a run writes conversations with: setting ``auto`` takes the tokenizer's own,
    else PLAIN; ``plain`` is PLAIN; anything else is a Jinja file."""
    if setting == "auto":
        return tok.chat_template or PLAIN
    if setting == "plain":
        return PLAIN
    return Path(setting).read_text()


def check_template_setting(setting: str) -> None:
    if setting not in ("auto", "plain") and not Path(setting).is_file():
        raise ValueError(f"chat_template={setting!r}: no such file; give auto (the tokenizer's template, else "
                         "plain), plain, or a Jinja template file")  # fmt: skip


def render(tok, messages: list[dict], where: str, tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """(text, character spans of the assistant's turns) of a conversation written with the
    tokenizer's chat template (given the ``tools`` it may call). A turn's span is what the template
    adds for it after the prompt that asks for it (add_generation_prompt): its text, tool calls and
    end. An assistant's turn that opens the conversation answers nothing and is read, not learned.
    A template that writes the start of a conversation differently once more turns follow has no
    such spans: a DataError."""
    text = _apply(tok, messages, False, where, tools)
    spans = []
    for k, turn in enumerate(messages):
        if turn["role"] != "assistant" or k == 0:
            continue
        asked = _apply(tok, messages[:k], True, where, tools)
        through = text if k == len(messages) - 1 else _apply(tok, messages[: k + 1], False, where, tools)
        if not (through.startswith(asked) and text.startswith(through)):
            raise DataError(f"{where}: the chat template writes the start of a conversation differently once more "
                            f"turns follow (turn {k}), so the assistant's turns cannot be told apart; set "
                            "task.chat_template to plain or to a template file that does not")  # fmt: skip
        spans.append((len(asked), len(through)))
    return text, spans


def _apply(tok, messages: list[dict], ask: bool, where: str, tools: list[dict] | None = None) -> str:
    from jinja2 import TemplateError

    try:
        return tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=ask)
    except TemplateError as e:
        raise DataError(f"{where}: the chat template refuses this conversation: {e}") from None


def prompt_text(tok, messages: list[dict], where: str, tools: list[dict] | None = None) -> str:
    """A conversation written as the prompt for the assistant's next turn."""
    return _apply(tok, messages, True, where, tools)


def chat_rows(tok, table, column: str, seq_len: int, what: str, tools: str | None = None) -> tuple[list[dict], int]:
    """(rows, how many were left out): each conversation's tokens, cut to seq_len + 1, with the
    token spans of its assistant turns (a token counts when it starts inside one). A conversation
    left with no assistant token (none in it, or all past the length) is left out. ``tools``: the
    column of each conversation's tools, where the table has one."""
    given = column_values(table, tools) if tools in table.column_names else [None] * len(table)
    written = [render(tok, json.loads(value), f"example {i} of {what}", json.loads(t) if t else None)
               for i, (value, t) in enumerate(zip(column_values(table, column), given, strict=True))]  # fmt: skip
    encoded = tok([text for text, _ in written], add_special_tokens=False, return_offsets_mapping=True)
    rows = []
    for (_, chars), ids, offsets in zip(written, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        ids = ids[: seq_len + 1]
        starts = [start for start, _ in offsets[: len(ids)]]
        spans = [(max(bisect_left(starts, a), 1), bisect_left(starts, b)) for a, b in chars]
        spans = [(a, b) for a, b in spans if a < b]  # the first token predicts nothing
        if spans:
            rows.append({"input_ids": ids, "spans": spans})
    return rows, len(written) - len(rows)
