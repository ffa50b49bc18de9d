"""Conversations as users bring them for supervised fine-tuning: OpenAI / HF {role, content} and
ShareGPT {from, value} turns, text parts, JSON text in a table's cell, sources of both kinds. The
loss is on the assistant's turns and nothing else; anything that is not a conversation is named
with its example and turn before a process starts."""

import json

import pytest

from finetune.chat import PLAIN, render, turns
from finetune.config import load_finetune_config
from finetune.data import check_task_sources, task_tables
from finetune.tasks import SFTCollator, sft_rows
from pretrain.config import ConfigError
from pretrain.data.sources import DataError

OPENAI = [{"role": "system", "content": "Answer with code."}, {"role": "user", "content": "A function adding one?"},
          {"role": "assistant", "content": "def inc(x):\n    return x + 1"}, {"role": "user", "content": "And two?"},
          {"role": "assistant", "content": "def inc2(x):\n    return x + 2"}]  # fmt: skip
SHAREGPT = [{"from": "human", "value": "Name the json loader."}, {"from": "gpt", "value": "json.loads"}]


def task(*sources, fraction=0.0, **options):
    overrides = [f"task.{k}={v}" for k, v in {"kind": "generate", "messages_column": "messages", **options}.items()]
    return load_finetune_config(None, ["init_from=somewhere", *overrides, f"data.validation_fraction={fraction}",
                                       f"data.sources={json.dumps([{'files': str(s)} for s in sources])}"])  # fmt: skip


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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


def test_conversations_are_held_out_whole(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"{i}"}]}
            for i in range(60)]  # fmt: skip
    tables = task_tables(task(jsonl(tmp_path / "chat.jsonl", rows), fraction=0.2))
    train, held = ({json.loads(x)[0]["content"] for x in tables[k]["messages"]} for k in ("train", "validation"))
    assert held and not train & held and len(train | held) == 60


@pytest.mark.parametrize(("conversation", "said"), [
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}],
     "example 1 of data.sources[0] (train data) is not a conversation: turn 1 has role 'bot'; a role is one of "
     "system, user, assistant, tool (ShareGPT's human and gpt are read as user and assistant)"),
    ([{"role": "user", "text": "hi"}], "turn 0 has keys ['role', 'text']; a turn needs a role and its content"),
    ("hello there", "text that is not a JSON list of turns: 'hello there'"),
    ([], "list '[]', not a list of turns"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "x.png"}]}],
     "turn 0 has content parts of type ['image_url'] (only text parts are read)"),
    ([{"role": "user", "content": [{"text": "untyped"}]}], "turn 0 has content parts of type ['?']"),
    ([{"role": ["user"], "content": "hi"}], "turn 0 has role ['user']; a role is one of"),
    ([{"role": "user", "content": True}], "turn 0 has content bool, not text"),
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
