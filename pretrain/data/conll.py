"""Word-per-line files, the layout tagging data has shipped in since CoNLL-2003: read into the hub's
column layout, one sentence an example, for task.kind: tag.

- conll: a word first and its tag last on each line, separated by spaces (CoNLL-2003) or tabs
  (then a word may hold spaces); blank lines end sentences and ``-DOCSTART-`` lines end documents.
  Columns: ``tokens`` and ``ner_tags``, and with CoNLL-2003's four columns the middle two as
  ``pos_tags`` and ``chunk_tags``. A file of words alone (one column) has ``tokens`` only, which
  is what finetune.predict tags.
- conllu: Universal Dependencies' ten tab-separated fields; ``#`` comment lines, multiword-token
  ranges (``1-2``) and empty nodes (``8.1``) are not words. Columns: ``tokens`` (FORM), ``upos``
  and ``xpos``.
"""

from __future__ import annotations

from pretrain.data.sources import DataError, open_text

CONLL_2003 = ("tokens", "pos_tags", "chunk_tags", "ner_tags")
CONLLU_FIELDS = "ID, FORM, LEMMA, UPOS, XPOS, FEATS, HEAD, DEPREL, DEPS, MISC"


def read_conll(files: list[str], kind: str, where: str):
    """The sentences of ``files`` (kind conll or conllu) as a datasets.Dataset; a DataError names
    the file and line that does not read."""
    import datasets

    rows: list[list[tuple[str, ...]]] = []
    width, first = None, None  # a conll file's columns, the same on every line of every file (and where first)
    for path in files:
        sentence: list[tuple[str, ...]] = []
        with open_text(path) as fh:
            for number, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                at = f"{where}: {path} line {number}"
                if not line.strip() or (kind == "conll" and line.split()[0] == "-DOCSTART-"):
                    if sentence:
                        rows.append(sentence)
                    sentence = []
                    continue
                if kind == "conllu":
                    fields = line.split("\t")
                    if line.startswith("#"):
                        continue
                    if len(fields) != 10:
                        raise DataError(f"{at} has {len(fields)} tab-separated fields; a CoNLL-U line has 10 "
                                        f"({CONLLU_FIELDS}), or is a comment starting with #")  # fmt: skip
                    if "-" in fields[0] or "." in fields[0]:
                        continue  # a multiword token's range or an empty node: its words have lines of their own
                    sentence.append((fields[1], fields[3], fields[4]))
                    continue
                fields = line.split("\t") if "\t" in line else line.split()
                if width is None:
                    width, first = len(fields), f"{path} line {number}"
                elif len(fields) != width:
                    raise DataError(f"{at} has {len(fields)} columns where {first} has {width}; "
                                    "a CoNLL file has a word first and its tag last on every line")  # fmt: skip
                sentence.append(tuple(fields))
        if sentence:
            rows.append(sentence)
    if not rows:
        raise DataError(f"{where}: {files[0] if len(files) == 1 else f'{len(files)} files'}: no sentences in it "
                        f"(a {kind} file has a word a line, blank lines between sentences)")  # fmt: skip
    if kind == "conllu":
        picks = {"tokens": 0, "upos": 1, "xpos": 2}  # of the (FORM, UPOS, XPOS) kept per word
    elif width == 4:
        picks = dict(zip(CONLL_2003, range(4), strict=True))
    else:
        picks = {"tokens": 0, "ner_tags": -1} if width > 1 else {"tokens": 0}  # the tag is the last column
    columns = {name: [[fields[k] for fields in sentence] for sentence in rows] for name, k in picks.items()}
    features = datasets.Features({name: datasets.Sequence(datasets.Value("string")) for name in picks})
    return datasets.Dataset.from_dict(columns, features=features)
