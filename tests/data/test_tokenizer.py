import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pretrain.data.config import TokenizerConfig
from pretrain.data.pipeline import run_tokenizer
from pretrain.data.sources import DataError, load_corpus
from pretrain.data.tokenizer import check_vocab, load_tokenizer, save_tokenizer, train_tokenizer

from .conftest import data_cfg

TEXT = 'def parse(s: str) -> dict:\n    """Décode JSON — «quotes» & tabs\there."""\n    return loads(s)  # 🙂\n'


def test_bpe_round_trips_text_exactly_and_loads_in_transformers(bpe, tmp_path):
    ids = bpe(TEXT, add_special_tokens=False)["input_ids"]
    assert bpe.decode(ids) == TEXT
    assert len(ids) < len(TEXT.encode())  # merges learned from the corpus compress it
    save_tokenizer(bpe, tmp_path / "tok")
    for loaded in (
        PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok"),
        AutoTokenizer.from_pretrained(tmp_path / "tok"),
    ):
        assert loaded(TEXT, add_special_tokens=False)["input_ids"] == ids
        assert (loaded.eos_token, loaded.pad_token) == ("<|endoftext|>", "<|pad|>")
        assert len(loaded) == len(bpe) == 400


def test_wordpiece_has_bert_specials_and_pair_template(wordpiece, tmp_path):
    save_tokenizer(wordpiece, tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert {tok.mask_token, tok.cls_token, tok.sep_token, tok.pad_token} == {
        "[MASK]",
        "[CLS]",
        "[SEP]",
        "[PAD]",
    }
    pair = tok("return loads(s)", "def parse")["input_ids"]
    assert pair[0] == tok.cls_token_id and pair[-1] == tok.sep_token_id and pair.count(tok.sep_token_id) == 2
    ids = tok("return loads(s)", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "return loads ( s )"  # WordPiece keeps the words, not the spacing


def test_unigram_round_trips_words(corpus_dir, tmp_path):
    cfg = data_cfg(corpus_dir, tmp_path, tokenizer=TokenizerConfig(kind="unigram", vocab_size=300, max_documents=10))
    tok = train_tokenizer(load_corpus(cfg, "train"), "decoder", cfg.tokenizer, 300)
    text = "return the value of the logger"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_the_same_text_trains_the_same_tokenizer(corpus_dir, tmp_path, kind):
    """Twice from the same corpus and config: the same tokenizer, ids included (WordPiece's trainer
    numbers tokens of equal counts in a hash map's order, new in every training; Unigram's sums its
    scores in an order that changes, ~4e-11 apart)."""
    cfg = data_cfg(corpus_dir, tmp_path, tokenizer=TokenizerConfig(kind=kind, vocab_size=400, max_documents=20))
    texts = load_corpus(cfg, "train")
    first, second = (train_tokenizer(texts, "encoder", cfg.tokenizer, 400) for _ in range(2))
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    vocab = first.get_vocab()
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]


def test_load_plain_tokenizer_json_recognises_specials(bpe, tmp_path):
    bpe.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == bpe.eos_token_id


def test_run_tokenizer_trains_once_then_reuses_the_runs_copy(corpus_dir, tmp_path):
    cfg = data_cfg(corpus_dir, tmp_path, tokenizer=TokenizerConfig(vocab_size=300))
    said = []
    first = run_tokenizer(cfg, "decoder", 320, tmp_path / "run", log=said.append)
    assert len(first) == 300 and not any("warning" in line for line in said), said
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").exists()
    cfg.sources[0].files = str(tmp_path / "does-not-exist")  # a resume must not need the corpus again
    again = run_tokenizer(cfg, "decoder", 320, tmp_path / "run")
    assert again.get_vocab() == first.get_vocab()


def test_a_text_too_small_for_the_vocabulary_asked_for_is_said(tmp_path):
    (tmp_path / "small.txt").write_text("the cat sat on the mat\n" * 50)
    cfg = data_cfg(tmp_path / "small.txt", tmp_path, tokenizer=TokenizerConfig(vocab_size=2000), validation_fraction=0)
    said = []
    tok = run_tokenizer(cfg, "decoder", 2048, tmp_path / "run", log=said.append)
    assert len(tok) < 400
    assert f"warning: the tokenizer learned {len(tok):,} of the 2,000 tokens asked for" in said[-1]
    assert f"model.vocab_size=2,048 keeps {2048 - len(tok):,} rows no token uses" in said[-1]


def test_tokenizer_larger_than_model_vocab_is_refused(bpe):
    with pytest.raises(
        DataError, match=r"the tokenizer has 400 tokens but model.vocab_size=256; set model.vocab_size >= 400"
    ):
        check_vocab(bpe, 256, "decoder")
    check_vocab(bpe, 448, "decoder")


def test_missing_tokenizer_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_tokenizer(tmp_path / "nope.json")


def test_a_configured_tokenizer_that_does_not_load_or_fit_is_refused_before_the_process_group(bpe, corpus_dir,
                                                                                             tmp_path):
    """data.tokenizer.path naming a file that is not a tokenizer was tokenizers' bare "expected `,`
    or `}`" traceback in rank 0 after the process group formed; it is one DataError from the task's
    check_data (which the launcher's preflight runs too), with the model's vocabulary and mask token
    checked there. A resume takes its run's saved tokenizer, so a configured file gone since is
    not refused then."""
    from pretrain.config import RunConfig
    from pretrain.model import ModelConfig
    from pretrain.run import LanguageModelTask

    (tmp_path / "list.json").write_text("[1, 2]")
    bpe.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    cases = [("list.json", "decoder", 512, r"data.tokenizer.path='.*list.json' does not load as a tokenizer \("),
             ("tokenizer.json", "decoder", 256, r"the tokenizer has 400 tokens but model.vocab_size=256"),
             ("tokenizer.json", "encoder", 512, r"masked-LM training needs a tokenizer with a mask_token")]  # fmt: skip
    for name, arch, vocab, message in cases:
        cfg = RunConfig(model=ModelConfig(arch=arch, vocab_size=vocab), output_dir=str(tmp_path / "runs"),
                        data=data_cfg(corpus_dir, tmp_path, tokenizer=TokenizerConfig(path=str(tmp_path / name))))
        with pytest.raises(DataError, match=message):
            LanguageModelTask.for_run(cfg).check_data()
    cfg.model = ModelConfig(vocab_size=512)
    LanguageModelTask.for_run(cfg).check_data()  # it fits a decoder of 512
    save_tokenizer(bpe, tmp_path / "runs" / cfg.name / "tokenizer")  # the run started, and saved it
    cfg.data.tokenizer.path = str(tmp_path / "moved-since.json")
    LanguageModelTask.for_run(cfg).check_data()
