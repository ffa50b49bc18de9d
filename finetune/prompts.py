"""Prompts written from a table's columns: instruction tables (Alpaca's instruction, input, output;
Dolly's instruction, context, response) fine-tune a decoder, or an encoder-decoder, with no column
that holds the whole prompt.

A template is text with ``{column}`` fields, or a list of such texts: each example takes the first
whose fields all hold text (not blank), else the last one, its blank fields written empty. So
Alpaca's two prompts, with and without an input, are one setting (``alpaca``). A null is blank, and
so is a column the data lacks, if the last form does not read it (a table with no input column).
The run's config keeps the template, so `finetune.generate` and `finetune.evaluate` write prompts
the way training did."""

from __future__ import annotations

import string

ALPACA = [
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n",
]
"""Stanford Alpaca's prompts (columns instruction and input), each ending in a line break before
the response."""

PRESETS = {"alpaca": ALPACA}


def _fields(text: str) -> list[str]:
    """The columns a template text names, in order (each once); a ValueError for a field that is not
    a column's name (``{}``, ``{0}``, ``{a.b}``, ``{a[0]}``, ``{a!r}``, ``{a:>9}``) or a lone brace."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"{e} (write a literal brace as {{{{ or }}}})") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.strip() or name.isdigit() or "." in name or "[" in name or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"field {shown} is not a column's name; write {{column}} (a literal brace as {{{{)")
        if name not in names:
            names.append(name)
    return names


class PromptTemplate:
    """A ``task.prompt_template`` setting: a preset's name, a text or a list of texts."""

    def __init__(self, setting: str | list[str], into: str = "prompt"):
        """``into``: the column the written prompts take (the task's prompt_column)."""
        self.into = into
        forms = PRESETS.get(setting, [setting]) if isinstance(setting, str) else list(setting)
        if not forms:
            raise ValueError("prompt_template=[]: give a text with {column} fields, a list of them, or "
                             f"one of {sorted(PRESETS)}")  # fmt: skip
        self.forms = []
        for text in forms:
            try:
                fields = _fields(text)
            except ValueError as e:
                raise ValueError(f"prompt_template {text[:60]!r}: {e}") from None
            if not fields:
                raise ValueError(
                    f"prompt_template {text[:60]!r}: names no column; write the columns that make the "
                    f"prompt as {{column}}, e.g. '{{instruction}}\\n', or use one of {sorted(PRESETS)}"
                )
            self.forms.append((text, fields))

    @property
    def columns(self) -> list[str]:
        """Every column some form reads, in order of first use."""
        return list(dict.fromkeys(name for _, fields in self.forms for name in fields))

    @property
    def required(self) -> list[str]:
        """The columns the data must have: the last form's (the others' may be absent, as blank)."""
        return self.forms[-1][1]

    def write(self, row: dict) -> str:
        """The prompt of one example (column -> value; a missing or null value is blank)."""
        values = {name: "" if row.get(name) is None else str(row[name]) for name in self.columns}
        for text, fields in self.forms:
            if all(values[name].strip() for name in fields):
                return text.format(**values)
        return self.forms[-1][0].format(**values)

    def chat_template(self) -> str:
        """The template as a tokenizer's chat template (Jinja), so that the tokenizer of every
        checkpoint and export carries it: a user's message fills the first column (the others
        blank, as finetune.generate writes a text prompt), an assistant's message is the response
        and the end of text. transformers' apply_chat_template then writes the prompt training did."""
        import json

        mark = "\ue000"  # a private-use character: no template holds it
        parts = [json.dumps(part) for part in self.write({self.columns[0]: mark}).split(mark)]
        user = " }}{{ message['content'] }}{{ ".join(parts)
        return ("{% for message in messages %}{% if message['role'] == 'user' %}{{ " + user + " }}"
                "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% endif %}"
                "{% endfor %}")

    def prompts(self, table) -> list[str]:
        """Every example's prompt (a datasets table)."""
        from pretrain.data.sources import column_values

        n = len(table)
        columns = {name: column_values(table, name) if name in table.column_names else [None] * n
                   for name in self.columns}  # fmt: skip
        return [self.write({name: values[i] for name, values in columns.items()}) for i in range(n)]

    def written(self, table):
        """``table`` (datasets) with its prompts written into column ``into`` in place of the
        template's columns."""
        from pretrain.data.sources import rewritten

        kept = [c for c in table.column_names if c not in self.columns and c != self.into]
        return rewritten(table, {self.into: self.prompts(table)}, order=[self.into, *kept])


def task_template(task) -> PromptTemplate | None:
    """The task's prompt template (None: the prompts are read from prompt_column)."""
    if task.prompt_template is None or task.kind not in ("generate", "seq2seq"):
        return None
    return PromptTemplate(task.prompt_template, into=task.prompt_column)
