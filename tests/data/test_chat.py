"""Conversations as users bring them for supervised fine-tuning: OpenAI / HF {role, content} and
ShareGPT {from, value} turns, text parts, JSON text in a table's cell, sources of both kinds. The
loss is on the assistant's turns and nothing else; anything that is not a conversation is named
with its example and turn before a process starts."""

import json

import pytest

from finetune.chat import PLAIN, render, turns
from finetune.data import check_task_sources, task_tables
from finetune.tasks import SFTCollator, sft_rows
from pretrain.config import ConfigError
from pretrain.data.sources import DataError

from .conftest import finetune_task, jsonl

OPENAI = [{"role": "system", "content": "Answer with code."}, {"role": "user", "content": "A function adding one?"},
          {"role": "assistant", "content": "def inc(x):\n    return x + 1"}, {"role": "user", "content": "And two?"},
          {"role": "assistant", "content": "def inc2(x):\n    return x + 2"}]  # fmt: skip
SHAREGPT = [{"from": "human", "value": "Name the json loader."}, {"from": "gpt", "value": "json.loads"}]


def task(*sources, fraction=0.0, kind="generate", **options):
    return finetune_task(kind, *sources, fraction=fraction, **{"messages_column": "messages", **options})


@pytest.fixture
def tok(bpe):
    """The session's BPE tokenizer with the plain chat template (taken off again after the test)."""
    bpe.chat_template = PLAIN
    yield bpe
    bpe.chat_template = None


def test_the_loss_is_on_the_assistant_turns_and_their_end_only(tmp_path, tok):
    """Every token the collator leaves in the labels, decoded, is an assistant turn and its
    end-of-text, in order; system and user turns and the role markers are read, not learned."""
    cfg = task(jsonl(tmp_path / "chat.jsonl", [{"messages": OPENAI}]))
    table = task_tables(cfg)["train"]
    rows = sft_rows(tok, table, cfg.task, 512, "the train data")
    batch = SFTCollator(tok.pad_token_id)([{**rows[0], "position": 0}])
    learned = batch["labels"][0][batch["labels"][0] >= 0].tolist()
    eos = tok.eos_token
    assert tok.decode(learned) == f"def inc(x):\n    return x + 1{eos}def inc2(x):\n    return x + 2{eos}"
    assert len(rows[0]["spans"]) == 2
    # the model reads the whole conversation: input and labels are the same tokens, one apart
    text, _ = render(tok, turns(OPENAI), "here")
    assert batch["input_ids"][0].tolist() == tok(text, add_special_tokens=False)["input_ids"][:-1]
    assert text.startswith("<|system|>\nAnswer with code." + eos + "\n<|user|>\n")


def test_sharegpt_openai_text_parts_and_json_cells_read_alike(tmp_path, tok):
    """Sources of each layout make one table of the same conversations (ShareGPT's human and gpt are
    user and assistant; text parts are joined; a CSV cell holds the conversation as JSON text)."""
    import csv

    parts = [{**t, "content": [{"type": "text", "text": t["content"][:5]}, {"type": "text", "text": t["content"][5:]}]}
             for t in OPENAI]  # fmt: skip
    table_file = tmp_path / "cells.csv"
    with open(table_file, "w", newline="") as f:
        csv.writer(f).writerows([["messages"], [json.dumps(OPENAI)]])
    sources = [jsonl(tmp_path / "openai.jsonl", [{"messages": OPENAI}]),
               jsonl(tmp_path / "parts.jsonl", [{"messages": parts}]), table_file,
               jsonl(tmp_path / "sharegpt.jsonl", [{"messages": SHAREGPT}])]
    table = task_tables(task(*sources))["train"]
    read = [json.loads(x) for x in table["messages"]]
    assert read[0] == read[1] == read[2] == OPENAI
    assert read[3] == [{"role": "user", "content": "Name the json loader."},
                       {"role": "assistant", "content": "json.loads"}]  # fmt: skip
    assert turns([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": 4}])[1]["content"] == "4"


TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Today's weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
CALLING = [{"role": "user", "content": "Weather in Paris?"},
           {"role": "assistant", "content": None, "tool_calls": [
               {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
           {"role": "tool", "tool_call_id": "c1", "content": "18C, sun"},
           {"role": "assistant", "content": "Sunny, 18C."}]  # fmt: skip
CALL = '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>'


def test_tool_calls_and_their_tools_are_learned_as_the_assistants_turns(tmp_path, tok):
    """OpenAI's function-calling layout (a tools column beside the messages; an assistant turn of
    tool_calls only, arguments as JSON text; a tool turn) and ShareGPT's (function_call and
    observation turns) read alike; the plain template writes the tools first and each call in its
    assistant's turn, and the loss is on the calls and the answers, not the tools or results."""
    sharegpt = [{"from": "human", "value": "Weather in Paris?"},
                {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                {"from": "observation", "value": "18C, sun"}, {"from": "gpt", "value": "Sunny, 18C."}]  # fmt: skip
    sources = [jsonl(tmp_path / "openai.jsonl", [{"messages": CALLING, "tools": TOOLS}]),
               jsonl(tmp_path / "sharegpt.jsonl", [{"messages": sharegpt, "tools": json.dumps(TOOLS)}]),
               jsonl(tmp_path / "none.jsonl", [{"messages": OPENAI}])]  # fmt: skip
    cfg = task(*sources)
    table = task_tables(cfg)["train"]
    read = [json.loads(x) for x in table["messages"]]
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    assert read[0][1] == {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", **call}]}
    assert read[1][1] == {"role": "assistant", "content": "", "tool_calls": [call]}  # ShareGPT's call has no id
    assert read[0][2] == {"role": "tool", "content": "18C, sun", "tool_call_id": "c1"}
    assert read[1][2] == {"role": "tool", "content": "18C, sun"}
    assert [json.loads(x) if x else None for x in table["tools"]] == [TOOLS, TOOLS, None]
    rows = sft_rows(tok, table, cfg.task, 512, "the train data")
    batch = SFTCollator(tok.pad_token_id)([{**r, "position": i} for i, r in enumerate(rows)])
    eos = tok.eos_token
    for i in (0, 1):
        labels = batch["labels"][i]
        assert tok.decode(labels[labels >= 0].tolist()) == f"{CALL}{eos}Sunny, 18C.{eos}"
        text, _ = render(tok, read[i], "here", TOOLS)
        assert text == (f"<|tools|>\n{json.dumps(TOOLS)}{eos}\n<|user|>\nWeather in Paris?{eos}\n<|assistant|>\n"
                        f"{CALL}{eos}\n<|tool|>\n18C, sun{eos}\n<|assistant|>\nSunny, 18C.{eos}")  # fmt: skip
    said = turns([{"role": "user", "content": "Weather?"},
                  {"role": "assistant", "content": "Let me look.", "tool_calls": [{"name": "weather"}]}])  # fmt: skip
    text, spans = render(tok, said, "here")
    assert [text[a:b] for a, b in spans] == ['Let me look.\n<tool_call>{"name": "weather", "arguments": {}}</tool_call>'
                                             + eos]  # fmt: skip


def test_an_assistant_turn_that_opens_a_conversation_is_read_not_learned(tmp_path, tok):
    """A greeting before anyone spoke answers nothing: no prompt asks for it, so it is context.
    A conversation of that turn alone has nothing to learn and is left out, and said."""
    greeting = [{"role": "assistant", "content": "Hello!"}, *OPENAI[1:3]]
    text, spans = render(tok, turns(greeting), "here")
    assert text.startswith("<|assistant|>\nHello!")
    assert [text[a:b] for a, b in spans] == [OPENAI[2]["content"] + tok.eos_token]
    cfg = task(jsonl(tmp_path / "g.jsonl", [{"messages": greeting}, {"messages": greeting[:1]}]))
    said = []
    assert len(sft_rows(tok, task_tables(cfg)["train"], cfg.task, 512, "the train data", said.append)) == 1
    assert said and "1 of 2 examples" in said[0]


def test_a_tools_column_that_is_not_one_is_named(tmp_path):
    bad = jsonl(tmp_path / "t.jsonl", [{"messages": CALLING, "fns": [{"description": "no name"}]}])
    with pytest.raises(DataError, match=r"task.tools_column='fns': example 0 of data.sources\[0\] \(train data\): "
                       r"tool 0 is .* not a tool definition"):  # fmt: skip
        check_task_sources(task(bad, tools_column="fns"))
    with pytest.raises(DataError, match=r"task.tools_column='functions': no such column"):
        check_task_sources(task(bad, tools_column="functions"))  # a name of one's own must be there
    check_task_sources(task(jsonl(tmp_path / "n.jsonl", [{"messages": CALLING}])))  # no tools column: none


def test_conversations_are_held_out_whole(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"{i}"}]}
            for i in range(60)]  # fmt: skip
    tables = task_tables(task(jsonl(tmp_path / "chat.jsonl", rows), fraction=0.2))
    train, held = ({json.loads(x)[0]["content"] for x in tables[k]["messages"]} for k in ("train", "validation"))
    assert held and not train & held and len(train | held) == 60


@pytest.mark.parametrize(("conversation", "said"), [
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}],
     "example 1 of data.sources[0] (train data) is not a conversation: turn 1 has role 'bot'; a role is one of "
     "system, user, assistant, tool (ShareGPT's human, gpt, function_call and observation are read as user, "
     "assistant, assistant and tool)"),
    ([{"role": "user", "text": "hi"}], "turn 0 has keys ['role', 'text']; a turn needs a role and its content"),
    ([{"role": "assistant", "content": None}], "turn 0 has keys ['role']; a turn needs a role and its content"),
    ("hello there", "text that is not a JSON list of turns: 'hello there'"),
    ([], "list '[]', not a list of turns"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "x.png"}]}],
     "turn 0 has content parts of type ['image_url'] (only text parts are read)"),
    ([{"role": "user", "content": [{"text": "untyped"}]}], "turn 0 has content parts of type ['?']"),
    ([{"role": ["user"], "content": "hi"}], "turn 0 has role ['user']; a role is one of"),
    ([{"role": "user", "content": True}], "turn 0 has content bool, not text"),
    ([{"role": "user", "tool_calls": [{"name": "f"}]}], "turn 0 has tool_calls and role 'user'; only the assistant"),
    ([{"role": "assistant", "tool_calls": [{"arguments": {}}]}], "turn 0's tool call 0 has no function name"),
    ([{"role": "assistant", "tool_calls": [{"name": "f", "arguments": "{city"}]}],
     "turn 0's tool call 0's arguments is not JSON: '{city'"),
    ([{"role": "assistant", "tool_calls": [{"name": "f", "arguments": [1]}]}],
     "turn 0's tool call 0 has arguments '[1]', not an object of named arguments"),
    ([{"role": "assistant", "tool_calls": "f()"}], "turn 0 has tool_calls 'f()', not a list of calls"),
    ([{"from": "function_call", "value": "weather(Paris)"}], "turn 0's function call is not JSON: 'weather(Paris)'"),
])  # fmt: skip
def test_what_is_not_a_conversation_is_named_with_its_example_and_turn(tmp_path, conversation, said):
    good = {"messages": json.dumps(SHAREGPT)}  # cells of JSON text: each bad value keeps its own form
    bad = conversation if isinstance(conversation, str) else json.dumps(conversation)
    cfg = task(jsonl(tmp_path / "chat.jsonl", [good, {"messages": bad}]))
    with pytest.raises(DataError, match="task.messages_column='messages': ") as e:
        check_task_sources(cfg)
    assert said in str(e.value)


def test_a_conversation_file_without_the_option_says_how_to_read_it(tmp_path):
    cfg = task(jsonl(tmp_path / "chat.jsonl", [{"id": 1, "conversations": SHAREGPT}]), messages_column="null")
    with pytest.raises(DataError) as e:
        check_task_sources(cfg)
    assert str(e.value) == ("task.prompt_column='prompt': no such column in data.sources[0] (train data); its column "
                            "'conversations' holds conversations: set task.messages_column=conversations to learn the "
                            "assistant's turns")  # fmt: skip


def test_conversations_without_an_assistant_turn_in_reach_are_left_out_and_said(tmp_path, tok):
    rows = [{"messages": OPENAI}, {"messages": [{"role": "user", "content": "no answer"}]}]
    cfg = task(jsonl(tmp_path / "chat.jsonl", rows))
    table, said = task_tables(cfg)["train"], []
    assert len(sft_rows(tok, table, cfg.task, 512, "the train data", said.append)) == 1
    assert said == ["warning: 1 of 2 examples of the train data have no assistant turn within data.seq_len=512 tokens: "
                    "left out"]  # fmt: skip
    with pytest.raises(DataError, match="every example of the train data has no assistant turn within data.seq_len=8"):
        sft_rows(tok, table, cfg.task, 8, "the train data")


def test_templates_that_rewrite_earlier_turns_or_refuse_roles_are_named(tok):
    """Some templates drop or change earlier turns as a conversation grows (so the assistant's turns
    have no place in the whole), or refuse a role; both are one line, not a traceback."""
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}{{ m['role'] + ': ' + m['content'] }}{% endif %}"
                         "{% endfor %}")  # the last turn only
    with pytest.raises(DataError, match=r"example 3 of here: the chat template writes the start of a conversation "
                       r"differently once more turns follow \(turn 2\)"):  # fmt: skip
        render(tok, turns(OPENAI), "example 3 of here")
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
                         "{% endif %}{{ m['content'] }}{% endfor %}")  # fmt: skip
    with pytest.raises(DataError, match="here: the chat template refuses this conversation: no system role"):
        render(tok, turns(OPENAI), "here")


def test_the_options_are_checked_with_the_config(tmp_path):
    with pytest.raises(ConfigError, match="messages_column='messages' with kind=seq2seq: conversations are for "
                       "kind=generate"):  # fmt: skip
        task(tmp_path / "x.jsonl", kind="seq2seq")
    with pytest.raises(ConfigError, match="chat_template='chatml.jinja': no such file; give auto"):
        task(tmp_path / "x.jsonl", chat_template="chatml.jinja")
