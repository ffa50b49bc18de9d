"""A fine-tuning task's examples: each source's train, validation and test tables reduced to the
columns the task reads. Training, `finetune.evaluate` and `finetune.predict` read them here, so a
held-out validation set is the same examples everywhere."""

from __future__ import annotations

import json
from pathlib import Path

from finetune.prompts import task_template
from pretrain.data.config import SourceConfig
from pretrain.data.sources import (
    DataError,
    aligned,
    column_texts,
    column_values,
    first_value,
    hold_out,
    load_table,
    require_columns,
)


def task_columns(cfg) -> dict[str, str]:
    """Config field -> column name, for the columns ``cfg.task`` reads."""
    t = cfg.task
    if t.messages_column:
        return {"messages_column": t.messages_column, "tools_column": t.tools_column}
    if t.kind == "tag":
        return {"tokens_column": t.tokens_column, "tags_column": t.tags_column}
    if t.kind == "qa":
        return {"question_column": t.question_column, "context_column": t.context_column,
                "answers_column": t.answers_column}
    if t.kind in ("generate", "seq2seq") and t.prompt_template is not None:
        fields = {f"prompt_template {{{c}}}": c for c in task_template(t).columns}
        return {**fields, "response_column": t.response_column}
    if t.kind in ("generate", "seq2seq"):
        return {"prompt_column": t.prompt_column, "response_column": t.response_column}
    columns = {"text_column": t.text_column, "label_column": t.label_column}
    if t.text_pair_column:
        columns["text_pair_column"] = t.text_pair_column
    return columns


def task_sources(cfg) -> list[SourceConfig]:
    """The data sources: the config's, or the built-in demo task's file."""
    if cfg.task.builtin:
        from finetune.demo_data import builtin_task_file

        return [SourceConfig(files=str(builtin_task_file(cfg.task.builtin, Path(cfg.data.cache_dir))))]
    return cfg.data.sources


def source_table(src: SourceConfig, part: str, columns: dict[str, str], where: str, template=None):
    """One source's ``part`` (train, validation or test) reduced to ``columns``, each one checked:
    there, and given in every example (a prompt template's columns may be blank or null).
    ``template`` (finetune.prompts.PromptTemplate): its columns are written into the prompt column."""
    from finetune.chat import conversation_column, looks_like_conversations, tools_column
    from finetune.config import TaskConfig

    table = load_table(src, part, where)
    chats = looks_like_conversations(table) if columns.get("prompt_column") not in (None, *table.column_names) else None
    if chats:
        raise DataError(f"task.prompt_column={columns['prompt_column']!r}: no such column in {where} ({part} data); "
                        f"its column {chats!r} holds conversations: set task.messages_column={chats} to learn the "
                        "assistant's turns")  # fmt: skip
    if template is not None:  # a column only the fuller forms read may be absent
        columns = {f: c for f, c in columns.items() if c in table.column_names or c not in template.columns
                   or c in template.required}  # fmt: skip
    default = TaskConfig.tools_column
    if columns.get("tools_column") == default and default not in table.column_names:
        columns = {f: c for f, c in columns.items() if f != "tools_column"}  # no tools (another name must be there)
    require_columns(table, columns, "task", f"{where} ({part} data)")
    table = table.select_columns(list(columns.values()))
    if "label_column" in columns:
        table = _label_names(table, columns["label_column"])
    if "messages_column" in columns:
        table = conversation_column(table, columns["messages_column"], f"{where} ({part} data)")
    if "tools_column" in columns:
        table = tools_column(table, columns["tools_column"], f"{where} ({part} data)")
    if "answers_column" in columns:
        from finetune.answers import answer_column

        table = answer_column(table, columns["question_column"], columns["context_column"], columns["answers_column"],
                              f"{where} ({part} data)")  # fmt: skip
    if "tokens_column" in columns:
        from finetune.tagging import word_column

        table = word_column(table, columns["tokens_column"], columns.get("tags_column"), f"{where} ({part} data)")
    for field, column in columns.items():
        _check_kind(table, field, column, f"{where} ({part} data)")
        optional = field.startswith("prompt_template") or field == "tools_column"  # blank or null is none
        empty = [] if optional else _missing(table, column, blank=field == "label_column")
        if empty:
            what = "no label (null, absent or blank)" if field == "label_column" else "no value (null or absent)"
            shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
            raise DataError(f"task.{field}={column!r}: {len(empty)} example(s) of {where} ({part} data) have {what}: "
                            f"example{'s' if len(empty) > 1 else ''} {shown} (counting from 0); fill them in or drop "
                            "those rows")  # fmt: skip
    return template.written(table) if template is not None else table


def _check_kind(table, field: str, column: str, where: str) -> None:
    """Texts are text (or numbers, read as their digits); a label is one category: not a list (one
    label per example) nor a fraction (a score to regress on)."""
    kind = getattr(table.features[column], "dtype", None)  # a plain column's type; None for lists, mixed kinds
    if kind is not None and not (field == "label_column" and kind.startswith("float")):
        return  # text, numbers or (for a label) whole numbers: nothing to look at value by value
    score = field == "label_column"
    bad = first_value(table, column, lambda v: isinstance(v, (list, dict))
                      or (score and isinstance(v, float) and not v.is_integer()))  # fmt: skip
    if bad is None:
        return
    i, value = bad
    if field != "label_column":
        why = "not text; name a column of text"
    elif isinstance(value, float):
        why = "a score, not a category: classification learns one of a set of labels (regression is not a task here)"
    else:
        why = "not one label: classification takes one label per example (multi-label is not a task here)"
    raise DataError(f"task.{field}={column!r}: example {i} of {where} holds {type(value).__name__} "
                    f"{str(value)[:40]!r}, {why}")  # fmt: skip


def _missing(table, column: str, blank: bool) -> list[int]:
    """Indices of the examples whose ``column`` is null (or, ``blank``, empty or whitespace)."""
    import pyarrow.compute as pc

    values = table.data.column(column)
    missing = pc.is_null(values)
    if blank and (values.type == "string" or values.type == "large_string"):
        missing = pc.or_kleene(missing, pc.equal(pc.utf8_trim_whitespace(values), ""))  # null or blank
    return pc.indices_nonzero(missing).to_pylist()


def _label_names(table, column: str):
    """A label column of datasets' ClassLabel (files datasets wrote: save_to_disk, its parquet; hub
    data) as the names it stands for, not their indices; -1 (no label, as GLUE's test splits have)
    as null, so it is named as a missing label. Labels written as text lose the spaces around them:
    a spreadsheet's "pos " is "pos", not a class of its own."""
    import datasets
    import pyarrow.compute as pc

    feature = table.features[column]
    if not isinstance(feature, datasets.ClassLabel):
        values = table.data.column(column)
        if values.type not in ("string", "large_string") or pc.all(pc.equal(values, pc.utf8_trim_whitespace(values))
                                                                   ).as_py() is not False:  # fmt: skip
            return table
        return table.map(lambda batch: {column: [v.strip() if v is not None else None for v in batch[column]]},
                         batched=True)  # fmt: skip
    features = table.features.copy()
    features[column] = datasets.Value("string")
    names = feature.names
    return table.map(lambda batch: {column: [names[i] if i is not None and 0 <= i < len(names) else None
                                             for i in batch[column]]}, batched=True, features=features)  # fmt: skip


def check_task_sources(cfg) -> dict:
    """Every local file of the task's sources (training, validation, test) reads in its format
    and has the task's columns: a DataError naming the first that does not (before any process
    group exists; the launcher runs it too). Built-in tasks and hub data are left to the run.
    Returns the tables read, by (source index, part), for ``task_tables`` to take instead of
    making them again (a tagging or chat table's rows are checked and rewritten one by one)."""
    read = {}
    if cfg.task.builtin:
        return read
    columns, template = task_columns(cfg), task_template(cfg.task)
    labels, named = set(), []
    for i, src in enumerate(cfg.data.sources):
        for part in src.local_parts():
            table = read[i, part] = source_table(src, part, columns, f"data.sources[{i}]", template)
            if part == "train":
                labels |= task_labels(table, cfg.task)
            else:
                named.append((table, f"the {part} data of data.sources[{i}]"))
    if cfg.task.kind in ("classify", "tag") and all(src.local_parts() for src in cfg.data.sources):
        tags = cfg.task.kind == "tag"
        field = "tags_column" if tags else "label_column"
        require_labels(sorted(labels), getattr(cfg.task, field), field)
        for table, what in named:  # a label the classifier never learns is refused here, not once ranks run
            check_labels(table, getattr(cfg.task, field), sorted(labels), what, tags)
    return read


def task_labels(table, task) -> set[str]:
    """The labels of a classification table, or the tags of a tagging one (empty for other kinds)."""
    if task.kind == "tag":
        return {tag for tags in column_values(table, task.tags_column) for tag in json.loads(tags)}
    return set(column_texts(table, task.label_column)) if task.kind == "classify" else set()


def check_labels(table, column: str, labels: list[str], what: str, tags: bool = False) -> None:
    """A DataError naming the labels of ``table`` (``tags``: the tags of its words) that the
    classifier was not trained on."""
    if tags:
        given = {tag for x in column_values(table, column) for tag in json.loads(x)}
    else:
        given = set(column_texts(table, column))
    unseen = sorted(given - set(labels))
    if unseen:
        raise DataError(f"{'tags' if tags else 'labels'} {unseen[:10]} appear in {what} but never in training "
                        f"(training has {labels[:20]}); add training examples or drop those rows")  # fmt: skip


def require_labels(labels: list[str], column: str, field: str = "label_column") -> None:
    """A classifier (or tagger: ``field`` tags_column) learns to tell two or more labels apart."""
    if len(labels) < 2:
        raise DataError(f"task.{field}={column!r}: the training data has {len(labels)} label(s) {labels}; a "
                        "classifier needs examples of two or more")  # fmt: skip


def task_tables(cfg, say=print, read: dict | None = None) -> dict:
    """{"train": table, "validation": table or None}: validation from each source's own
    validation data, else held out of its training data (pretrain.data.sources.hold_out, whole
    examples); max_train_examples cuts training only. ``read``: the tables check_task_sources
    returned, taken as they are."""
    import datasets

    t, frac, columns, template = cfg.task, cfg.data.validation_fraction, task_columns(cfg), task_template(cfg.task)
    key = {"classify": t.text_column, "tag": t.tokens_column, "qa": t.question_column}.get(t.kind)
    key = key or t.messages_column or t.prompt_column
    parts = {"train": [], "validation": []}
    read = read or {}

    def table(i, src, part):
        return read[i, part] if (i, part) in read else source_table(src, part, columns, f"data.sources[{i}]", template)

    for i, src in enumerate(task_sources(cfg)):
        where = f"data.sources[{i}]"
        train = table(i, src, "train")
        if src.names("validation"):
            parts["validation"].append(table(i, src, "validation"))
        elif frac > 0 and len(train):
            parts["validation"].append(hold_out(train, frac, "validation", where, log=say, key=key, whole_rows=True))
            train = hold_out(train, frac, "train", where, key=key, whole_rows=True)
        parts["train"].append(train)
    tables = {k: datasets.concatenate_datasets(aligned(v)) if v else None for k, v in parts.items()}
    limit = t.max_train_examples
    if limit is not None and limit < len(tables["train"]):
        tables["train"] = tables["train"].shuffle(seed=cfg.train.seed).select(range(limit))
    return tables


def named_part(cfg, part: str):
    """The examples of every source that names its own data for ``part`` (validation or test)."""
    import datasets

    columns, template = task_columns(cfg), task_template(cfg.task)
    found = [source_table(src, part, columns, f"data.sources[{i}]", template)
             for i, src in enumerate(task_sources(cfg)) if src.names(part)]  # fmt: skip
    if not found:
        raise DataError(f"no {part} data: no source of this run gives {part}_files (or {part}_split); "
                        "score a file with --data FILE instead")  # fmt: skip
    return datasets.concatenate_datasets(aligned(found))


def add_file_arguments(ap) -> None:
    """The options that say how to read a labeled or unlabeled file (evaluate, predict)."""
    ap.add_argument("--text-column", help="classification: the column with the text (default: the run's)")
    ap.add_argument("--pair-column", help="classification: the second text column of pair tasks")
    ap.add_argument("--label-column", help="classification: the column with the label (default: the run's)")
    ap.add_argument("--tokens-column", help="tagging: the column of each example's words (default: the run's)")
    ap.add_argument("--tags-column", help="tagging: the column of each word's tag (default: the run's)")
    ap.add_argument("--question-column", help="question answering: the question column (default: the run's)")
    ap.add_argument("--context-column", help="question answering: the context column (default: the run's)")
    ap.add_argument("--answers-column", help="question answering: the answers column (default: the run's)")
    ap.add_argument("--prompt-column", help="generation: the prompt column (default: the run's)")
    ap.add_argument("--response-column", help="generation: the response column (default: the run's)")
    ap.add_argument("--messages-column", help="generation: the column of conversations (default: the run's)")
    ap.add_argument("--delimiter", help="csv/tsv field separator (default: ',' for .csv, a tab for .tsv)")
    ap.add_argument("--no-header", action="store_true", help="csv/tsv: the first line is data (give --column-names)")
    ap.add_argument("--column-names", help="csv/tsv: the columns' names in order, comma-separated, e.g. text,label")
    ap.add_argument("--field", help="json: the key whose list holds the records ({\"data\": [...]})")
    ap.add_argument("--kind", choices=["text", "json", "csv", "parquet", "arrow", "conll", "conllu"],
                    help="read the file as this kind whatever its name (default: from its suffix)")  # fmt: skip
    ap.add_argument("--quoting", choices=["minimal", "all", "nonnumeric", "none"], default="minimal",
                    help="csv/tsv quoting (none: quote characters are text)")  # fmt: skip


def file_source(file: str, args) -> SourceConfig:
    """A SourceConfig for one file given on the command line, checked like a config's."""
    from pretrain.config import ConfigError

    names = [c.strip() for c in args.column_names.split(",")] if args.column_names else None
    src = SourceConfig(files=file, header=not args.no_header, column_names=names, quoting=args.quoting,
                       delimiter=args.delimiter.replace("\\t", "\t") if args.delimiter else None,
                       field=args.field, kind=args.kind)  # fmt: skip
    try:
        src.validate()
    except ValueError as e:
        raise ConfigError(f"{file}: {as_flags(str(e))}") from None
    return src


def as_flags(message: str) -> str:
    """A message about a source's options, said with the command line's flags."""
    for option, flag in (("header=false", "--no-header"), ("column_names", "--column-names"),
                         ("; kind: text reads", "; --kind text reads"), ("give kind: text", "give --kind text"),
                         (".files: ", ": ")):  # fmt: skip
        message = message.replace(option, flag)
    return message


def file_table(file: str, args, columns: dict[str, str] | None = None, where: str | None = None, template=None):
    """A file given on the command line (evaluate's --data, predict's FILE) as a table: with
    ``columns``, reduced to them and checked as a source's (source_table); errors name the flags."""
    src = file_source(file, args)
    try:
        if columns is None:
            return load_table(src, "train", where or file)
        return source_table(src, "train", columns, where or file, template)
    except DataError as e:
        said = as_flags(str(e))
        raise DataError(said if where else said.replace(f"{file}: {file}", file, 1)) from None  # named once


def override_columns(cfg, args) -> None:
    """The run's task columns, replaced where the command line names others."""
    if getattr(args, "prompt_column", None) and cfg.task.prompt_template is not None:
        from pretrain.config import ConfigError

        raise ConfigError(f"--prompt-column {args.prompt_column}: this run writes its prompts with "
                          f"task.prompt_template from columns {task_template(cfg.task).columns}; give a file "
                          "with those columns")  # fmt: skip
    for field, arg in (("text_column", "text_column"), ("text_pair_column", "pair_column"),
                       ("label_column", "label_column"), ("tokens_column", "tokens_column"),
                       ("tags_column", "tags_column"), ("question_column", "question_column"),
                       ("context_column", "context_column"), ("answers_column", "answers_column"),
                       ("prompt_column", "prompt_column"),
                       ("response_column", "response_column"), ("messages_column", "messages_column")):  # fmt: skip
        if getattr(args, arg, None):
            setattr(cfg.task, field, getattr(args, arg))
