"""SQuAD's own JSON files (train-v1.1.json, dev-v2.0.json: articles of paragraphs, each a context
with its questions and answers) read as the hub's rows: id, title, context, question and answers
({"text": [...], "answer_start": [...]}, empty where SQuAD 2.0 marks the question impossible).
That nesting is not a table, so datasets' json reader would give one row of 'version' and 'data'."""

from __future__ import annotations

import json

from pretrain.data.sources import DataError, open_text

HEAD = 1 << 16  # what is read of a file to tell whether it is SQuAD's


def is_squad(path: str) -> bool:
    """Whether a JSON file holds SQuAD's nesting, from its start: one object whose articles have
    paragraphs of question-answer sets ("paragraphs" and "qas" keys)."""
    with open_text(path) as fh:
        head = fh.read(HEAD)
    return head.lstrip().startswith("{") and '"paragraphs"' in head and '"qas"' in head


def read_squad(files: list[str], where: str):
    """The questions of SQuAD-format ``files`` as a datasets.Dataset, a row a question; a DataError
    names the file and what in it is not SQuAD's."""
    import datasets

    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for path in files:
        with open_text(path) as fh:
            doc = json.load(fh)
        articles = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(articles, list):
            raise DataError(f"{where}: {path} has no 'data' list of articles; SQuAD's files hold "
                            '{"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [...]}]}]}')  # fmt: skip
        for a, article in enumerate(articles):
            for p, paragraph in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
                at = f"{where}: {path} data[{a}].paragraphs[{p}]"
                if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                    raise DataError(f"{at} has no context text")
                for q, qa in enumerate(paragraph.get("qas", [])):
                    if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
                        raise DataError(f"{at}.qas[{q}] has no question text")
                    given = [] if qa.get("is_impossible") else qa.get("answers", [])
                    if not isinstance(given, list) or not all(isinstance(x, dict) for x in given):
                        raise DataError(f"{at}.qas[{q}].answers is not a list of {{text, answer_start}}")
                    for x in given:
                        start = x.get("answer_start")
                        if not isinstance(start, int) or isinstance(start, bool) or not isinstance(x.get("text"), str):
                            raise DataError(f"{at}.qas[{q}] has the answer {x!r:.80}: not a text and the character "
                                            "position it starts at")  # fmt: skip
                    rows["id"].append(str(qa.get("id", f"{a}.{p}.{q}")))
                    rows["title"].append(str(article.get("title", "")))
                    rows["context"].append(paragraph["context"])
                    rows["question"].append(qa["question"])
                    rows["answers"].append({"text": [x.get("text") for x in given],
                                            "answer_start": [x.get("answer_start") for x in given]})  # fmt: skip
    if not rows["id"]:
        raise DataError(f"{where}: {files[0] if len(files) == 1 else f'{len(files)} files'}: no questions in it")
    answers = {"text": datasets.Sequence(datasets.Value("string")),
               "answer_start": datasets.Sequence(datasets.Value("int64"))}  # fmt: skip
    features = datasets.Features({**{k: datasets.Value("string") for k in ("id", "title", "context", "question")},
                                  "answers": answers})  # fmt: skip
    return datasets.Dataset.from_dict(rows, features=features)
