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

from pretrain.data.sources import DataError

ROLES = ("system", "user", "assistant", "tool")
ALIASES = {"human": "user", "gpt": "assistant"}  # ShareGPT's names
PLAIN = (
    "{% for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{% if messages %}{{ '\\n' }}{% endif %}{{ '<|assistant|>\\n' }}{% endif %}"
)
"""Each turn as <|role|>, a line break, its text and end-of-text (Zephyr's layout, with no tokens
added to the vocabulary): the model learns to end its turn with end-of-text, where sampling stops."""


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
        if role is None or content is None:
            raise ValueError(f"turn {n} has keys {sorted(k for k, v in turn.items() if v is not None)}; a turn needs a "
                             "role and its content ({role, content}, or ShareGPT's {from, value})")  # fmt: skip
        role = ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise ValueError(f"turn {n} has role {role!r}; a role is one of {', '.join(ROLES)} (ShareGPT's human "
                             "and gpt are read as user and assistant)")  # fmt: skip
        out.append({"role": role, "content": _text(content, n)})
    return out


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
    import datasets

    written = []
    for i, value in enumerate(table[column]):
        try:
            written.append(None if value is None else json.dumps(turns(value), ensure_ascii=False))
        except ValueError as e:
            raise DataError(f"task.messages_column={column!r}: example {i} of {where} is not a conversation: "
                            f"{e}") from None  # fmt: skip
    features = table.features.copy()
    features[column] = datasets.Value("large_string")
    return datasets.Dataset.from_dict({c: written if c == column else table[c] for c in table.column_names},
                                      features=features)


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


def render(tok, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
    """(text, character spans of the assistant's turns) of a conversation written with the
    tokenizer's chat template. A turn's span is what the template adds for it after the prompt
    that asks for it (add_generation_prompt): its text and its end. A template that writes the
    start of a conversation differently once more turns follow has no such spans: a DataError."""
    text = _apply(tok, messages, False, where)
    spans = []
    for k, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        asked, through = _apply(tok, messages[:k], True, where), _apply(tok, messages[: k + 1], False, where)
        if not (through.startswith(asked) and text.startswith(through)):
            raise DataError(f"{where}: the chat template writes the start of a conversation differently once more "
                            f"turns follow (turn {k}), so the assistant's turns cannot be told apart; set "
                            "task.chat_template to plain or to a template file that does not")  # fmt: skip
        spans.append((len(asked), len(through)))
    return text, spans


def _apply(tok, messages: list[dict], ask: bool, where: str) -> str:
    from jinja2 import TemplateError

    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=ask)
    except TemplateError as e:
        raise DataError(f"{where}: the chat template refuses this conversation: {e}") from None


def prompt_text(tok, messages: list[dict], where: str) -> str:
    """A conversation written as the prompt for the assistant's next turn."""
    return _apply(tok, messages, True, where)


def chat_rows(tok, table, column: str, seq_len: int, what: str) -> tuple[list[dict], int]:
    """(rows, how many were left out): each conversation's tokens, cut to seq_len + 1, with the
    token spans of its assistant turns (a token counts when it starts inside one). A conversation
    left with no assistant token (none in it, or all past the length) is left out."""
    written = [render(tok, json.loads(value), f"example {i} of {what}") for i, value in enumerate(table[column])]
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
