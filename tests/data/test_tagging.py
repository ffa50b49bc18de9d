"""Token classification (task.kind: tag) data: words and a tag per word, aligned to the tokens of
a WordPiece and a byte-level BPE tokenizer (the first token of each word carries its tag), BIO
entities scored as seqeval scores them, and every malformed example named before a process
starts."""

import json
from functools import partial

import pytest
import torch

from finetune.data import check_task_sources, task_tables
from finetune.tagging import TagCollator, TagLoss, are_entity_tags, entities, first_tokens, tag_metrics, tag_rows
from pretrain.data.batches import IGNORE
from pretrain.data.sources import DataError

from .conftest import finetune_task, jsonl

ROWS = [
    {"tokens": ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
     "ner_tags": ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]},
    {"tokens": ["Peter", "Blackburn"], "ner_tags": ["B-PER", "I-PER"]},
    {"tokens": ["json.loads(text)", "parses", "it"], "ner_tags": ["B-FN", "O", "O"]},
]  # fmt: skip


task = partial(finetune_task, "tag")


@pytest.mark.parametrize("tokenizer", ["bpe", "wordpiece"])
def test_each_words_first_token_carries_its_tag_and_no_other_token_does(tmp_path, tokenizer, request):
    tok = request.getfixturevalue(tokenizer)
    cfg = task(jsonl(tmp_path / "ner.jsonl", ROWS))
    table = task_tables(cfg)["train"]
    labels = sorted({t for r in ROWS for t in r["ner_tags"]})
    rows = tag_rows(tok, table, cfg.task, labels, 64, False)
    for row, example in zip(rows, ROWS, strict=True):
        tagged = [k for k, t in enumerate(row["tags"]) if t != IGNORE]
        assert [labels[row["tags"][k]] for k in tagged] == example["ner_tags"]  # one per word, in order
        ends = [*tagged[1:], len(row["input_ids"])]
        for word, a, b in zip(example["tokens"], tagged, ends, strict=True):  # a word's tokens, up to the next word
            said = tok.decode(row["input_ids"][a:b]).replace(" ", "").replace("##", "").replace("[SEP]", "")
            assert said.lower() == word.lower()


def test_words_past_the_length_have_no_tag_token():
    class Chars:  # one token per character, no specials
        def __call__(self, texts, **_):
            return {"input_ids": [[ord(c) for c in t][:6] for t in texts],
                    "offset_mapping": [[(i, i + 1) for i in range(len(t))][:6] for t in texts]}  # fmt: skip

    _, firsts = first_tokens(Chars(), [["ab", "cd", "ef"]], 6, False)
    assert firsts == [[0, 3, None]]  # "ab cd " fills 6; "ef" lies past it


def test_entities_are_scored_by_span_and_type_as_seqeval_does():
    assert entities(["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC"]) == {(0, 2, "PER"), (3, 6, "LOC")}
    assert entities(["I-PER", "I-PER", "B-PER", "I-ORG"]) == {(0, 2, "PER"), (2, 3, "PER"), (3, 4, "ORG")}
    assert are_entity_tags(["O", "B-PER", "I-PER"])
    assert not are_entity_tags(["NOUN", "VERB"]) and not are_entity_tags(["O"])
    # IOBES (E- ends an entity, S- is one of a single word) and BILOU (L- and U- for the same)
    iobes = ["S-PER", "B-LOC", "E-LOC", "S-LOC", "O", "B-ORG", "I-ORG", "E-ORG", "I-ORG"]
    assert entities(iobes) == {(0, 1, "PER"), (1, 3, "LOC"), (3, 4, "LOC"), (5, 8, "ORG"), (8, 9, "ORG")}
    bilou = ["U-PER", "B-LOC", "L-LOC", "U-LOC", "B-ORG", "I-ORG", "L-ORG"]
    assert entities(bilou) == {(0, 1, "PER"), (1, 3, "LOC"), (3, 4, "LOC"), (4, 7, "ORG")}
    assert entities(["B-PER", "E-PER", "E-PER", "S-PER", "I-PER"]) == {(0, 2, "PER"), (2, 3, "PER"), (3, 4, "PER"),
                                                                       (4, 5, "PER")}  # fmt: skip
    assert are_entity_tags(sorted(set(iobes))) and are_entity_tags(sorted(set(bilou)))
    assert not are_entity_tags(["O", "I-PER"])  # no entity starts
    assert not are_entity_tags(["B-PER", "X-PER"])  # X- is no scheme's prefix
    labels = ["B-PER", "I-PER", "O"]
    loss = TagLoss(labels)

    class Fixed(torch.nn.Module):  # logits that pick the given tags
        def __init__(self, picks):
            super().__init__()
            self.picks = torch.tensor(picks)

        def forward(self, input_ids, **_):
            return torch.nn.functional.one_hot(self.picks, 3).float() * 5

    truth = [[0, 1, 2, 0], [2, 0, 1, IGNORE]]  # PER(0-2) PER(3); PER(1-3)
    guess = [[0, 1, 2, 2], [2, 0, 2, 2]]  # PER(0-2) right; PER(1-2) wrong span; the second PER missed
    batch = TagCollator(0)([{"input_ids": [5] * 4, "tags": t, "position": 0} for t in truth])
    _, sums = loss(Fixed(guess), batch)
    assert (sums["entities_found"], sums["entities_given"], sums["entities_right"]) == (2, 3, 1)
    m = tag_metrics({**sums, "loss_sum": 0.0, "count": sums["count"]})
    assert m["val_entity_precision"] == pytest.approx(1 / 2) and m["val_entity_recall"] == pytest.approx(1 / 3)
    assert m["val_entity_f1"] == pytest.approx(0.4) and m["val_accuracy"] == pytest.approx(5 / 7)
    assert "entities_found" not in TagLoss(["NOUN", "VERB"])(Fixed([[0, 1]]), TagCollator(0)(
        [{"input_ids": [5, 5], "tags": [0, 1], "position": 0}]))[1]  # fmt: skip


def test_class_label_numbers_and_texts_of_words_read_as_names(tmp_path):
    import datasets

    tags = datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER"]))
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": tags})
    datasets.Dataset.from_dict({"tokens": [["Ada", "wrote"]], "ner_tags": [[1, 0]]}, features=features).to_parquet(
        tmp_path / "ner.parquet")  # fmt: skip
    jsonl(tmp_path / "text.jsonl", [{"words": "Ada  wrote", "tags": ["B-PER", "O"]}])
    table = task_tables(task(tmp_path / "ner.parquet"))["train"]
    assert json.loads(table["ner_tags"][0]) == ["B-PER", "O"] and json.loads(table["tokens"][0]) == ["Ada", "wrote"]
    table = task_tables(task(tmp_path / "text.jsonl", tokens_column="words", tags_column="tags"))["train"]
    assert json.loads(table["words"][0]) == ["Ada", "wrote"]


@pytest.mark.parametrize(("row", "said"), [
    ({"tokens": ["a", "b"], "ner_tags": ["O"]}, "task.tags_column='ner_tags': example 1 of data.sources[0] (train "
     "data) has 1 tags for 2 words; give one tag per word"),
    ({"tokens": ["a", "b"], "ner_tags": 3}, "holds int '3', not a list of tags (one per word)"),
    ({"tokens": "a b", "ner_tags": "O"}, "has 1 tags for 2 words"),
    ({"tokens": [["a"], "b"], "ner_tags": ["O", "O"]}, "task.tokens_column='tokens': example 1 of"),
    ({"tokens": ["a", " "], "ner_tags": ["O", "O"]}, "word 1 is blank; a word is text without spaces around it"),
    ({"tokens": [], "ner_tags": []}, "it has no words"),
    ({"tokens": ["a"], "ner_tags": [None]}, "tag 0 is None, not a tag"),
])  # fmt: skip
def test_an_example_that_is_not_words_and_tags_is_named(tmp_path, row, said):
    cfg = task(jsonl(tmp_path / "ner.jsonl", [ROWS[1], row]))
    with pytest.raises(DataError) as e:
        check_task_sources(cfg)
    assert said in str(e.value)


def test_one_tag_only_or_a_missing_column_is_named(tmp_path):
    with pytest.raises(DataError, match=r"task.tags_column='ner_tags': the training data has 1 label\(s\) \['O'\]"):
        check_task_sources(task(jsonl(tmp_path / "one.jsonl", [{"tokens": ["a"], "ner_tags": ["O"]}])))
    with pytest.raises(DataError, match=r"task.tokens_column='words': no such column"):
        check_task_sources(task(jsonl(tmp_path / "ner.jsonl", ROWS), tokens_column="words"))


CONLL_2003 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

json.loads(text) NN B-NP B-FN
parses VBZ B-VP O
"""

CONLLU = """# sent_id = 1
# text = I'd say no.
1-2\tI'd\t_\t_\t_\t_\t_\t_\t_\t_
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2\t'd\twould\tAUX\tMD\t_\t3\taux\t_\t_
3\tsay\tsay\tVERB\tVB\t_\t0\troot\t_\t_
3.1\tthink\tthink\tVERB\tVB\t_\t_\t_\t3:conj\t_
4\tno\tno\tINTJ\tUH\t_\t3\tobj\t_\tSpaceAfter=No
5\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = 2
1\tNew York\tNew York\tPROPN\tNNP\t_\t0\troot\t_\t_
"""


def test_conll_and_conllu_files_read_a_sentence_an_example_in_the_hubs_columns(tmp_path):
    """CoNLL-2003's files (a word a line, its tag last, -DOCSTART- between documents, as eng.train
    ships without a suffix) and Universal Dependencies' CoNLL-U are what tagging data comes as."""
    (tmp_path / "eng.train").write_bytes(CONLL_2003.replace("\n", "\r\n").encode())
    from finetune.config import load_finetune_config

    source = json.dumps([{"files": str(tmp_path / "eng.train"), "kind": "conll"}])
    cfg = load_finetune_config(None, ["init_from=somewhere", "task.kind=tag", "data.validation_fraction=0.0",
                                      f"data.sources={source}"])  # fmt: skip
    table = task_tables(cfg)["train"]
    assert [json.loads(t) for t in table["tokens"]] == [["EU", "rejects", "German", "call", "."],
                                                       ["Peter", "Blackburn"], ["json.loads(text)", "parses"]]
    assert [json.loads(t) for t in table["ner_tags"]] == [["B-ORG", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER"],
                                                         ["B-FN", "O"]]  # fmt: skip
    from pretrain.data.conll import read_conll

    raw = read_conll([str(tmp_path / "eng.train")], "conll", "here")
    assert raw.column_names == ["tokens", "pos_tags", "chunk_tags", "ner_tags"] and raw[1]["pos_tags"] == ["NNP"] * 2
    (tmp_path / "wnut.conll").write_text("New York\tB-LOC\nrocks\tO\n\nhi\tO\n")  # tabs: a word may hold a space
    table = task_tables(task(tmp_path / "wnut.conll"))["train"]
    assert [json.loads(t) for t in table["tokens"]] == [["New York", "rocks"], ["hi"]]
    (tmp_path / "ewt.conllu").write_text(CONLLU)
    table = task_tables(task(tmp_path / "ewt.conllu", tags_column="upos"))["train"]
    assert [json.loads(t) for t in table["tokens"]] == [["I", "'d", "say", "no", "."], ["New York"]]
    assert [json.loads(t) for t in table["upos"]] == [["PRON", "AUX", "VERB", "INTJ", "PUNCT"], ["PROPN"]]


@pytest.mark.parametrize(("name", "text", "said"), [
    ("a.conll", "EU B-ORG\nrejects\n", "a.conll line 2 has 1 columns where .*a.conll line 1 has 2; a CoNLL file has a "
     "word first and its tag last on every line"),
    ("b.conllu", "# c\n1\tI\tI\tPRON\n", r"b.conllu line 2 has 4 tab-separated fields; a CoNLL-U line has 10 \(ID, "),
    ("c.conll", "-DOCSTART- -X- -X- O\n\n", r"c.conll: no sentences in it \(a conll file has a word a line"),
])  # fmt: skip
def test_a_conll_file_that_does_not_read_is_named_with_its_line(tmp_path, name, text, said):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=said):
        check_task_sources(task(tmp_path / name))


def test_lists_a_table_holds_as_text_are_read_as_lists(tmp_path):
    """CSV and TSV cells are text: pandas' to_csv writes a list as "['EU', 'rejects']"; others write
    words and tags between spaces. Split at spaces, that list gave the words "['EU'," and "'rejects']"."""
    import csv

    with open(tmp_path / "ner.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["tokens", "ner_tags"])
        out.writerow([str(ROWS[0]["tokens"]), str(ROWS[0]["ner_tags"])])
        out.writerow([" ".join(ROWS[1]["tokens"]), " ".join(ROWS[1]["ner_tags"])])
        out.writerow([json.dumps(ROWS[2]["tokens"]), json.dumps(ROWS[2]["ner_tags"])])
    table = task_tables(task(tmp_path / "ner.csv"))["train"]
    assert [json.loads(t) for t in table["tokens"]] == [r["tokens"] for r in ROWS]
    assert [json.loads(t) for t in table["ner_tags"]] == [r["ner_tags"] for r in ROWS]
