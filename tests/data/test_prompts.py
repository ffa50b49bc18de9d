"""Instruction tables for supervised fine-tuning: prompts written from columns (task.prompt_template).
Alpaca's layout (instruction, input, output; input often blank), Dolly's (instruction, context,
response) and a one-field template; the loss is on the response only; a bad template or a missing
column is named before a process starts."""


import pytest

from finetune.data import check_task_sources, task_tables
from finetune.prompts import ALPACA, PromptTemplate
from finetune.tasks import SFTCollator, seq2seq_rows, sft_rows
from pretrain.config import ConfigError
from pretrain.data.sources import DataError

from .conftest import finetune_task, jsonl

ROWS = [
    {"instruction": "Give the json loader.", "input": "", "output": "json.loads"},
    {"instruction": "Add the numbers.", "input": "2 3", "output": "5"},
    {"instruction": "Name a logger.", "output": "logging.getLogger"},  # no input key at all: null
]


def task(*sources, fraction=0.0, kind="generate", **options):
    options = {"prompt_template": "alpaca", "response_column": "output", **options}
    return finetune_task(kind, *sources, fraction=fraction, **options)


def test_alpaca_takes_its_input_form_only_where_the_input_is_filled():
    t = PromptTemplate("alpaca")
    assert t.columns == ["instruction", "input"]
    with_input = t.write({"instruction": "Add.", "input": "2 3"})
    assert with_input == ALPACA[0].format(instruction="Add.", input="2 3")
    assert "### Input:\n2 3\n\n### Response:\n" in with_input
    for blank in ("", "  \n", None):
        assert t.write({"instruction": "Add.", "input": blank}) == ALPACA[1].format(instruction="Add.")
    assert t.write({"instruction": "Add."}) == ALPACA[1].format(instruction="Add.")  # a missing column is blank


@pytest.mark.parametrize("setting", ["alpaca", 'Q: {q}\n{q} again? \u00abn\u00e9e\u00bb {{literal}} "x" {ctx}\nA: '])
def test_the_template_as_a_chat_template_writes_what_training_wrote(setting):
    """What a checkpoint's (and an export's) tokenizer carries: transformers' apply_chat_template
    writes a user's message as the template's first column, as finetune.generate does, then an
    assistant's reply and the end of text (quotes, braces, line breaks and accents kept)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    t = PromptTemplate(setting)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<e>": 1}, unk_token="a")),
                                  eos_token="<e>")  # fmt: skip
    tok.chat_template = t.chat_template()
    ask = [{"role": "user", "content": 'Add "2" {and} 3.'}]
    prompt = t.write({t.columns[0]: 'Add "2" {and} 3.'})
    assert tok.apply_chat_template(ask, tokenize=False) == prompt
    answered = [*ask, {"role": "assistant", "content": "5"}]
    assert tok.apply_chat_template(answered, tokenize=False) == prompt + "5<e>"


def test_a_list_takes_the_first_form_whose_fields_are_filled_else_the_last():
    t = PromptTemplate(["Q: {question}\nContext: {context}\nA: ", "Q: {question}\nA: "])
    assert t.columns == ["question", "context"]
    assert t.write({"question": "Why?", "context": "Because."}) == "Q: Why?\nContext: Because.\nA: "
    assert t.write({"question": "Why?", "context": ""}) == "Q: Why?\nA: "
    assert t.write({"question": "", "context": ""}) == "Q: \nA: "  # nothing fits: the last, blanks empty
    assert PromptTemplate("{my col} and {a-b} {{x}}").write({"my col": 1, "a-b": 2.5}) == "1 and 2.5 {x}"


@pytest.mark.parametrize("setting, said", [
    ("{}", "field {} is not a column's name"), ("{0}", "field {0}"), ("{a.b}", "field {a.b}"),
    ("{a[0]}", "field {a[0]}"), ("{a!r}", "field {a!r}"), ("{a:>9}", "field {a:>9}"),
    ("x {a", "expected '}'"), ("alpca", "names no column"), ([], "prompt_template=[]"),
])  # fmt: skip
def test_a_bad_template_is_named(setting, said):
    with pytest.raises(ValueError, match=None) as e:
        PromptTemplate(setting)
    assert said in str(e.value)


def test_the_loss_is_on_the_response_only_and_the_prompt_is_the_template(tmp_path, bpe):
    """Every labelled token, decoded, is the response and its end-of-text; the model reads the
    written prompt before it. Blank and missing inputs take the shorter form."""
    cfg = task(jsonl(tmp_path / "alpaca.jsonl", ROWS))
    table = task_tables(cfg)["train"]
    assert table.column_names == ["prompt", "output"]
    prompts = [PromptTemplate("alpaca").write(r) for r in ROWS]
    assert list(table["prompt"]) == prompts and prompts[0].count("### Input") == 0 and "### Input:\n2 3" in prompts[1]
    rows = sft_rows(bpe, table, cfg.task, 512, "the train data")
    batch = SFTCollator(bpe.pad_token_id)([{**r, "position": i} for i, r in enumerate(rows)])
    for i, row in enumerate(ROWS):
        labels = batch["labels"][i]
        assert bpe.decode(labels[labels >= 0].tolist()) == row["output"] + bpe.eos_token
        read = batch["input_ids"][i][: len(bpe(prompts[i], add_special_tokens=False)["input_ids"])]
        assert bpe.decode(read.tolist()) == prompts[i]


def test_dolly_columns_a_seq2seq_source_and_the_hold_out_by_written_prompt(tmp_path, bpe):
    dolly = [{"instruction": f"Say {i}.", "context": "ctx" if i % 2 else "", "response": str(i)} for i in range(40)]
    forms = ["{instruction}\nContext: {context}\n", "{instruction}\n"]
    cfg = task(jsonl(tmp_path / "dolly.jsonl", dolly), fraction=0.25, prompt_template=forms, response_column="response")
    tables = task_tables(cfg, say=lambda _: None)
    assert len(tables["train"]) + len(tables["validation"]) == 40 and len(tables["validation"]) > 0
    written = sorted([*tables["train"]["prompt"], *tables["validation"]["prompt"]])
    assert written == sorted(PromptTemplate(forms).write(r) for r in dolly)
    cfg.task.kind = "seq2seq"
    rows = seq2seq_rows(bpe, tables["train"], cfg.task, 64, 16, "the train data")
    first = tables["train"][0]
    assert bpe.decode(rows[0]["input_ids"]) == first["prompt"] + bpe.eos_token
    assert bpe.decode(rows[0]["target"]) == first["response"] + bpe.eos_token


def test_missing_columns_and_bad_settings_are_named_before_a_process_starts(tmp_path):
    data = jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}])
    with pytest.raises(
        DataError,
        match=r"task.prompt_template \{question\}='question': no such column in "
        r"data.sources\[0\] \(train data\); the data has \['instruction', 'output'\]",
    ):
        check_task_sources(task(data, prompt_template="Q: {question}"))
    check_task_sources(task(data))  # alpaca's input is read only by its fuller form: a table may lack it
    assert list(task_tables(task(data))["train"]["prompt"]) == [ALPACA[1].format(instruction="x")]
    with pytest.raises(DataError, match=r"task.prompt_template \{instruction\}='instruction': no such column"):
        check_task_sources(task(jsonl(tmp_path / "d.jsonl", [{"input": "x", "output": "y"}])))
    listed = jsonl(tmp_path / "b.jsonl", [{"instruction": ["x"], "output": "y"}])
    with pytest.raises(DataError, match=r"\{instruction\}='instruction': example 0 .* holds list"):
        check_task_sources(task(listed))
    no_answer = jsonl(tmp_path / "c.jsonl", [{"instruction": "x", "output": None}])
    with pytest.raises(DataError, match="task.response_column='output': 1 example"):
        check_task_sources(task(no_answer))
    bad = [({"kind": "classify"}, "prompt_template with kind=classify"),
           ({"messages_column": "messages"}, "prompt_template with messages_column='messages'"),
           ({"response_column": "input"}, "reads column 'input', the response_column"),
           ({"prompt_template": "{x"}, "task.prompt_template '{x': expected '}'")]  # fmt: skip
    for options, said in bad:
        with pytest.raises(ConfigError) as e:
            task(data, **options)
        assert said in str(e.value)


def test_a_table_of_prompts_is_read_a_record_a_row_and_its_prompt_column_is_the_runs(tmp_path):
    """A seq2seq run trained on source/target columns, given its dev.csv as --prompts-file: each
    line was a prompt, the header one of them and the target pasted beside each source."""
    from finetune.generate import read_prompts, templated

    (tmp_path / "dev.csv").write_text('source,target\n"reverse: a, b",b a\nreverse: c d,d c\n')
    records = read_prompts(str(tmp_path / "dev.csv"))
    assert records == [{"source": "reverse: a, b", "target": "b a"}, {"source": "reverse: c d", "target": "d c"}]
    written = [templated(None, r, False, "RUN", f"row {i}", "source") for i, r in enumerate(records)]
    assert written == ["reverse: a, b", "reverse: c d"]
    assert templated(None, {"prompt": "p", "source": "s"}, False, "RUN", "row 0", "source") == "p"
    with pytest.raises(ConfigError, match=r"row 0: a record needs a 'prompt' or its prompt column 'source' or "
                                          r"'messages' .*this one has \['target'\], and RUN has no prompt template"):
        templated(None, {"target": "b a"}, False, "RUN", "row 0", "source")
    alpaca = PromptTemplate("alpaca")  # a template's columns come first
    assert templated(alpaca, {"instruction": "Add.", "source": "x"}, False, "RUN", "row 0", "source") == \
        alpaca.write({"instruction": "Add."})  # fmt: skip


def test_a_table_of_conversations_gives_conversations(tmp_path):
    import datasets

    from finetune.generate import Chat, read_prompts

    chats = [[{"role": "user", "content": "hi"}], [{"role": "system", "content": "be brief"},
                                                   {"role": "user", "content": "add 2 and 3"}]]  # fmt: skip
    datasets.Dataset.from_dict({"messages": chats}).to_parquet(str(tmp_path / "chats.parquet"))
    prompts = read_prompts(str(tmp_path / "chats.parquet"))
    assert [type(p) for p in prompts] == [Chat, Chat] and [len(p.shown()["messages"]) for p in prompts] == [1, 2]
    (tmp_path / "bad.tsv").write_text('messages\n[{"role": "user", "text": "hi"}]\n')
    with pytest.raises(ConfigError, match=r"--prompts-file .*bad.tsv row 1: turn 0 has keys \['role', 'text'\]"):
        read_prompts(str(tmp_path / "bad.tsv"))


def test_a_prompts_file_of_windows_lines_blank_lines_or_latin_1_reads_as_its_prompts_or_one_line(tmp_path):
    """A Windows editor's prompts file gave prompts ending in a carriage return, blank lines were
    prompted as empty documents, an empty file said "give --prompt TEXT or --prompts-file FILE" to
    someone who gave one, and Latin-1 bytes were a UnicodeDecodeError traceback."""
    from finetune.generate import read_prompts

    (tmp_path / "crlf.txt").write_bytes(b'def add(a, b):\r\n\r\n{"prompt": "class Stack:"}\r\n  \r\nline\\nbreak\r\n')
    assert read_prompts(str(tmp_path / "crlf.txt")) == ["def add(a, b):", {"prompt": "class Stack:"}, "line\nbreak"]
    cases = [("empty.txt", b"", r"empty.txt holds no prompts \(it is empty, or its lines are blank"),
             ("blank.txt", b"\n \n\t\n", r"blank.txt holds no prompts"),
             ("latin.txt", b"caf\xe9\n", r"latin.txt is not UTF-8 text \(byte 3\); convert it"),
             ("head.csv", b"prompt\n", r"--prompts-file: .*head.csv: no examples in it")]  # fmt: skip
    for name, data, message in cases:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError, match=message):
            read_prompts(str(tmp_path / name))
    from types import SimpleNamespace

    from finetune.data import file_table

    flags = SimpleNamespace(no_header=False, column_names=None, quoting="minimal", delimiter=None, field=None,
                            kind=None)  # fmt: skip
    with pytest.raises(ConfigError) as refused:  # predict's FILE: the file named once, not "FILE: FILE: ..."
        file_table(str(tmp_path / "head.csv"), flags)
    assert str(refused.value).startswith(f"{tmp_path / 'head.csv'}: no examples in it")
