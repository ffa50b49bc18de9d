"""Fine-tuning pieces that need no processes: heads, parameter groups, metrics."""

from pathlib import Path

import pytest
import torch

from finetune.tasks import Classifier, classification_metrics
from pretrain.engine import param_groups
from pretrain.model import ModelConfig, Transformer


def body():
    return Transformer(ModelConfig(vocab_size=50, d_model=16, num_layers=3, num_heads=2, max_seq_len=32))


def test_frozen_body_trains_the_head_only():
    model = Classifier(body(), num_labels=3, pooling="last", dropout=0.0)
    for p in model.body.parameters():
        p.requires_grad_(False)
    groups = param_groups(model, 0.1, 1e-3)
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(model.classifier.weight), id(model.classifier.bias)}


def real_lr_scale(decay: float, num_layers: int):
    """FinetuneTask.lr_scale itself, on a task holding only what the method reads."""
    from types import SimpleNamespace

    from finetune.tasks import FinetuneTask

    task = FinetuneTask.__new__(FinetuneTask)
    task.cfg = SimpleNamespace(task=SimpleNamespace(layer_lr_decay=decay))
    task.pretrained = SimpleNamespace(model_cfg=SimpleNamespace(num_layers=num_layers))
    return task.lr_scale


@pytest.mark.parametrize("position", ["learned", "relative"])
def test_layer_wise_learning_rates(position):
    model = Classifier(Transformer(ModelConfig(vocab_size=50, d_model=16, num_layers=3, num_heads=2, max_seq_len=32,
                                               position=position, arch="encoder")),
                       num_labels=3, pooling="first", dropout=0.0)  # fmt: skip
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.1, 1e-3, real_lr_scale(0.5, 3))
    lr_of = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert lr_of["body.layers.2.mlp.fc.weight"] == (pytest.approx(5e-4), 0.1)
    assert lr_of["body.layers.0.mlp.fc.weight"] == (pytest.approx(1.25e-4), 0.1)
    assert lr_of["body.embed.tokens.weight"] == (pytest.approx(6.25e-5), 0.0)  # embeddings never decay
    if position == "relative":  # the position module sits below the first layer, like the embeddings
        assert lr_of["body.position.embedding.weight"] == (pytest.approx(6.25e-5), 0.0)
    assert lr_of["classifier.weight"] == (pytest.approx(1e-3), 0.1)
    assert lr_of["body.layers.1.attn_norm.weight"][1] == 0.0
    assert len(lr_of) == sum(p.numel() > 0 for p in model.parameters())
    assert real_lr_scale(1.0, 3)("body.layers.0.mlp.fc.weight") == 1.0


def test_pooling_last_reads_the_last_real_token():
    model = Classifier(body(), num_labels=2, pooling="last", dropout=0.0).eval()
    ids = torch.randint(1, 50, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    torch.testing.assert_close(model(padded, attention_mask=mask), model(ids), atol=1e-5, rtol=0)


def test_classification_metrics_from_a_confusion_matrix():
    confusion = torch.tensor([[5.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])  # third label never occurs
    m = classification_metrics({"confusion": confusion, "loss_sum": 3.0, "count": 10})
    assert m["val_accuracy"] == pytest.approx(0.7)
    f1_a, f1_b = 2 * 5 / (2 * 5 + 2 + 1), 2 * 2 / (2 * 2 + 1 + 2)
    assert m["val_macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert m["val_loss"] == pytest.approx(0.3) and m["val_confusion"][1] == [2, 2, 0]


class CharTokenizer:
    """Just what finetune.generate needs: characters in, ids out (no special tokens)."""

    pad_token_id, eos_token_id = 0, None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + ord(c) % 90 for c in text]}

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(int(i)) for i in row) for row in rows]


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "alibi", "relative", "rope-sinks"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_generation_with_left_padding_equals_each_prompt_alone(position, use_cache):
    """Prompts of different lengths are padded on the left: each row's positions must count from its
    first real token, as they do for the prompt alone (learned and sinusoidal positions show a shift
    that RoPE's relative rotation hides); so must its global tokens (rope-sinks: a window of 4 and
    the first 2 real tokens seen from everywhere)."""
    from finetune.generate import Sampling, generate

    torch.manual_seed(0)
    sparse = dict(sliding_window=4, global_tokens=2) if position == "rope-sinks" else {}
    model = Transformer(ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=64,
                                    position=position.removesuffix("-sinks"), **sparse)).eval()  # fmt: skip
    with torch.no_grad():  # weights large enough that the continuation depends on position
        for p in model.parameters():
            p.mul_(8.0)
    prompts = ["def f(x):", "import os, sys  # a longer prompt"]
    s = Sampling(max_new_tokens=6, temperature=0.0)
    tok = CharTokenizer()
    together = generate(model, tok, prompts, s, use_cache=use_cache)
    alone = [generate(model, tok, [p], s, use_cache=use_cache)[0] for p in prompts]
    assert together == alone
    assert len(set(together)) == 2  # the two rows differ: the comparison is not between constants


def test_the_model_section_is_checked_against_init_froms_shape_not_the_default():
    """A fine-tuning config's own model section is unused: data.seq_len is checked against the
    checkpoint's positions (with_model), on a new config, leaving the parsed one as it was."""
    from finetune.config import load_finetune_config
    from pretrain.config import ConfigError

    cfg = load_finetune_config(None, ["init_from=somewhere", "data.seq_len=4096"])  # beyond the default 1024
    rope = ModelConfig(vocab_size=50, d_model=16, num_layers=2, num_heads=2, position="rope")
    resolved = cfg.with_model(rope)
    assert resolved.model is rope and resolved.data.seq_len == 4096
    assert cfg.model == ModelConfig()  # not rewritten in place
    with pytest.raises(ConfigError, match="data.seq_len=4096: longer than the model's 256 learned positions"):
        cfg.with_model(ModelConfig(vocab_size=50, d_model=16, num_layers=2, num_heads=2, max_seq_len=256))


def test_a_classifier_resumes_with_the_head_its_checkpoint_holds_and_reads_as_written(tmp_path):
    """A checkpoint written before task.head holds the linear head: its config reads as linear
    (predict, evaluate), and a resume with the default (hf) is refused, not a failed load of weights."""
    from finetune.config import load_finetune_config, saved_finetune_config
    from pretrain.config import ConfigError, save_config

    for name, head in (("old", None), ("new", "hf")):
        saved = load_finetune_config(None, ["init_from=somewhere", "task.kind=classify"])
        (tmp_path / name).mkdir()
        save_config(saved, tmp_path / name / "config.yaml")
        if head is None:  # as an earlier release wrote it
            text = (tmp_path / name / "config.yaml").read_text()
            (tmp_path / name / "config.yaml").write_text(text.replace("  head: hf\n", ""))
        assert saved_finetune_config(tmp_path / name).task.head == (head or "linear")
    again = load_finetune_config(None, ["init_from=somewhere", "task.kind=classify"])
    again.check_resume(tmp_path / "new")
    with pytest.raises(ConfigError, match="task.head changed linear -> hf: checkpoint .*old holds the linear head; "
                                          "resume with task.head=linear, or start a new run"):  # fmt: skip
        again.check_resume(tmp_path / "old")
    load_finetune_config(None, ["init_from=somewhere", "task.kind=classify", "task.head=linear"]).check_resume(
        tmp_path / "old")
    load_finetune_config(None, ["init_from=somewhere", "task.kind=tag"]).check_resume(tmp_path / "old")  # no such head


@pytest.mark.parametrize(
    "task, arch, message",
    [
        (dict(kind="generate"), "encoder-decoder", "task.kind=generate with X, an encoder-decoder: an encoder-decoder "
                                                   "fine-tunes with task.kind=seq2seq"),
        (dict(kind="seq2seq"), "decoder", "task.kind=seq2seq needs an encoder-decoder checkpoint"),
        (dict(kind="generate"), "encoder", "task.kind=generate needs a decoder (causal) checkpoint; X is an encoder"),
        (dict(kind="seq2seq", layer_lr_decay=0.9), "encoder-decoder", "task.layer_lr_decay=0.9: not for an encoder-"),
        (dict(kind="classify", layer_lr_decay=0.9), "encoder-decoder", "task.layer_lr_decay=0.9: not for an encoder-"),
        (dict(kind="seq2seq", freeze_body=True), "encoder-decoder", "task.freeze_body=true: not for task.kind=seq2seq"),
        (dict(kind="seq2seq"), "encoder-decoder", None),
        (dict(kind="classify", freeze_body=True), "encoder-decoder", None),
        (dict(kind="classify"), "encoder", None),
    ],
)
def test_a_task_that_cannot_train_the_checkpoints_family_is_one_line(task, arch, message):
    from finetune.config import TaskConfig
    from finetune.tasks import check_task_fits
    from pretrain.data.sources import DataError

    if message is None:
        check_task_fits(TaskConfig(**task), arch, "X")
        return
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_task_fits(TaskConfig(**task), arch, "X")


def test_an_encoder_decoder_classifies_the_mean_of_its_encoder_output():
    """The decoder and LM head are dropped (nothing ZeRO would see unused); the head reads the mean
    of the encoder's output over real tokens, so padding changes nothing."""
    from finetune.config import TaskConfig
    from pretrain.model import EncoderDecoder

    cfg = ModelConfig(arch="encoder-decoder", vocab_size=50, d_model=16, num_layers=2, num_decoder_layers=1,
                      num_heads=2, max_seq_len=16, position="relative", norm="rmsnorm", bias=False)  # fmt: skip
    torch.manual_seed(0)
    body = EncoderDecoder(cfg).eval()
    ids = torch.randint(3, 50, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        encoded = body.encode(ids, mask)
    pooling = TaskConfig().pooling_for(cfg.arch)
    model = Classifier(body, 3, pooling, 0.0).eval()
    assert pooling == "mean" and not [k for k in model.state_dict() if k.startswith(("body.decoder", "body.head"))]
    with torch.no_grad():
        logits = model(ids, mask)
        alone = model(ids[1:, :4], mask[1:, :4])
    want = (encoded * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) @ model.classifier.weight.T
    torch.testing.assert_close(logits, want + model.classifier.bias, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone[0], logits[1], atol=1e-5, rtol=0)
    from pretrain.model import flops_per_token

    encoder = sum(m.weight.numel() for m in body.encoder.modules() if isinstance(m, torch.nn.Linear))
    assert flops_per_token(body, 6, 0.0) == 6.0 * encoder + 12.0 * cfg.d_model * cfg.num_layers * 6  # for MFU


def test_an_empty_prompt_starts_a_document_and_positions_past_the_model_are_one_line():
    """A decoder samples from nothing as from right after an end-of-text; a learned-position model
    refuses a prompt + new tokens it has no positions for (rotary ones extrapolate and go on)."""
    from finetune.generate import Sampling, beam_search, generate
    from pretrain.config import ConfigError
    from pretrain.model import build_model

    class WithEos(CharTokenizer):
        eos_token_id = 5  # what the prompt "^" encodes to

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=16)).eval()
    s = Sampling(max_new_tokens=6, temperature=0.0)
    assert generate(model, WithEos(), [""], s) == generate(model, WithEos(), ["^"], s)
    message = r"the longest prompt \(12 tokens\) \+ max_new_tokens=6 needs 18 positions but the model's learned"
    with pytest.raises(ConfigError, match=message + r" positions are 16; shorten the prompt"):
        generate(model, WithEos(), ["twelve chars"], s)
    with pytest.raises(ConfigError, match=r"needs 18 positions"):
        beam_search(model, WithEos(), ["twelve chars"], 2, 6)
    rope = Transformer(ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=16,
                                   position="rope")).eval()  # fmt: skip
    assert len(generate(rope, WithEos(), ["twelve chars"], s)[0].split()) == 6
    bart = build_model(ModelConfig(arch="encoder-decoder", vocab_size=97, d_model=32, num_layers=2, num_heads=4,
                                   max_seq_len=16, position="learned")).eval()  # fmt: skip
    with pytest.raises(ConfigError, match=r"max_new_tokens=20 needs 21 positions but the decoder's learned positions"):
        generate(bart, WithEos(), ["short"], Sampling(max_new_tokens=20, temperature=0.0))
    with pytest.raises(ConfigError, match=r"the longest prompt \(21 tokens\) needs 21 positions but the encoder's"):
        generate(bart, WithEos(), ["a twenty-char prompt"], s)


def test_lora_targets_must_name_linear_layers_of_the_model():
    """peft raised in every rank for a target it could not find; the config refuses it first."""
    from finetune.config import load_finetune_config
    from pretrain.config import ConfigError

    model = ModelConfig(vocab_size=50, d_model=16, num_layers=2, num_heads=2, max_seq_len=512)
    cfg = load_finetune_config(None, ["init_from=somewhere", "task.lora_rank=4", "task.lora_targets=[qkv, mlp.fc]"])
    assert cfg.with_model(model).model is model  # suffixes of the layers' names, as peft matches them
    cfg = load_finetune_config(None, ["init_from=somewhere", "task.lora_rank=4", "task.lora_targets=[q_proj]"])
    with pytest.raises(ConfigError, match=r"task.lora_targets: 'q_proj' names no linear layer of the model; its linear "
                                          r"layers are \['attn.proj', 'attn.qkv', 'head', 'mlp.fc', 'mlp.proj'\]"):
        cfg.with_model(model)


def test_sft_examples_whose_prompt_fills_the_length_are_left_out_and_said():
    """An example with no room for a response token has nothing to learn; leaving every one out
    would train on nothing (it was a traceback in every rank)."""
    import datasets

    from finetune.config import TaskConfig
    from finetune.tasks import sft_rows
    from pretrain.data.sources import DataError

    class Words:
        eos_token_id = 0

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[1 + len(w) for w in text.split()] for text in texts]}

    task = TaskConfig(kind="generate")
    table = datasets.Dataset.from_list([{"prompt": "a b c", "response": "d"}, {"prompt": "a " * 9, "response": "e"},
                                        {"prompt": "a " * 8, "response": "f g"}])  # fmt: skip
    said = []
    rows = sft_rows(Words(), table, task, 8, "the train data", said.append)
    assert [r["spans"] for r in rows] == [[(3, 5)], [(8, 9)]]  # 8 + one response token: the 9 tokens of a row of 8
    assert rows[0]["input_ids"] == [2, 2, 2, 2, 0] and rows[1]["input_ids"] == [2] * 9  # + end-of-text / cut
    assert said == ["warning: 1 of 3 examples of the train data have prompts longer than data.seq_len=8 tokens (the "
                    "longest has 9) and no room for a response: left out"]  # fmt: skip
    with pytest.raises(DataError, match=r"every example of the validation data has a prompt longer than data.seq_len"):
        sft_rows(Words(), table, task, 2, "the validation data", said.append)


def test_a_demo_task_file_cut_short_is_written_again(tmp_path, capsys):
    """The built-in task's JSON lines live under the data cache; one cut short (a copy of the cache
    that stopped) was read as it was, and the run stopped on its torn last line."""
    from finetune.demo_data import builtin_task_file

    path = builtin_task_file("stdlib-names", tmp_path)
    whole = path.read_bytes()
    assert builtin_task_file("stdlib-names", tmp_path) == path and capsys.readouterr().err == ""
    path.write_bytes(whole[: len(whole) // 2])
    assert builtin_task_file("stdlib-names", tmp_path) == path and path.read_bytes() == whole
    assert capsys.readouterr().err == f"warning: the demo task file {path} is cut short; writing it again\n"


def test_evaluations_greedy_completions_stop_where_a_learned_position_model_runs_out():
    """finetune.evaluate's exact match decodes prompts in batches by length, each batch for as long
    as its longest target, never past a learned-position model's positions: a prompt near the end
    gets what room is left, one that fills them gets nothing, and each is as if decoded alone."""
    from finetune.evaluate import greedy
    from finetune.generate import Sampling, generate

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=16)).eval()
    tok = CharTokenizer()
    prompts = ["abc", "twelve chars", "de", "sixteen chars ok"]  # 3, 12, 2 and 16 tokens
    got = greedy(model, tok, prompts, [6, 6, 2, 6], batch_size=2)
    assert [len(g.split()) for g in got] == [6, 4, 6, 0]  # "de" shares its batch (and its 6 tokens) with "abc"
    for i, n in ((0, 6), (1, 4), (2, 6)):
        assert got[i] == generate(model, tok, [prompts[i]], Sampling(max_new_tokens=n, temperature=0.0))[0]


def test_the_launchers_preflight_makes_every_ranks_examples_and_refuses_what_a_rank_would(tmp_path, capsys):
    """`python -m launch.preflight --data` (which `launch` runs before it starts a process) makes the
    task's examples as each rank does: a seq2seq target longer than task.target_len is one line
    here, not once every rank has started; with room for it the same data passes."""
    from launch.preflight import main
    from tests.test_inspect import export_folder

    folder = export_folder(tmp_path, ModelConfig(arch="encoder-decoder", vocab_size=512, d_model=32, num_layers=2,
                                                 num_heads=2, max_seq_len=256, position="relative"))  # fmt: skip
    rows = [f"reverse: a b {i},{i} b a" for i in range(30)] + ["repeat: x,x x x x x x x x x x x x x x x x x x x x"]
    (tmp_path / "pairs.csv").write_text("source,target\n" + "\n".join(rows) + "\n")
    argv = ["--program", "finetune", "--data", "--no-memory", "configs/finetune/stdlib-names.yaml",
            f"init_from={folder}", "task.builtin=null", f"data.sources=[{{files: '{tmp_path}/pairs.csv'}}]",
            "task.prompt_column=source", "task.response_column=target", "data.validation_fraction=0",
            f"output_dir={tmp_path}/runs", f"data.cache_dir={tmp_path}/cache"]  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        main([*argv, "task.target_len=16"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("config error:") == 1, err
    assert "config error: task.target_len=16: 1 of the 31 targets in the train data are longer (the longest has " in err
    main([*argv, "task.target_len=64"])
    assert "preflight: data files read, their examples made and checked" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


def test_examples_are_held_in_int32_columns_and_given_back_as_the_rows_they_were(tmp_path):
    """Every row kind the tasks make (classification with token types, SFT spans, seq2seq targets,
    tags with IGNORE, QA windows) comes back as it went in: from the rows, from the files they are
    saved to (memory-mapped, and pickled to a worker without their data), plus a stream position."""
    import pickle

    import numpy as np

    from finetune.examples import Examples
    from finetune.tasks import ExampleDataset

    kinds = [[{"input_ids": [5, 70000, 2], "label": 1, "token_type_ids": [0, 0, 1]},
              {"input_ids": [7], "label": 0, "token_type_ids": [0]}],
             [{"input_ids": [9, 8, 7, 6], "spans": [(1, 3)]}, {"input_ids": [4, 4], "spans": [(0, 1), (1, 2)]}],
             [{"input_ids": [3], "target": [4, 1]}, {"input_ids": [], "target": [2]}],
             [{"input_ids": [2, 3, 4], "tags": [-100, 2, -100]}],
             [{"input_ids": [2, 3], "start": 0, "end": 0, "example": 7, "context": [0, 1]},
              {"input_ids": [3, 4], "start": 1, "end": 1, "example": 7, "context": [0, 1]},
              {"input_ids": [5, 6], "start": -100, "end": -100, "example": 9, "context": [1, 1]}]]  # fmt: skip
    for k, rows in enumerate(kinds):
        made = Examples.from_rows(rows)
        assert made.arrays["input_ids.values"].dtype == np.int32
        made.save(tmp_path / str(k))
        opened = Examples.open(tmp_path / str(k), {"rows": len(rows), "columns": made.kinds})
        assert isinstance(opened.arrays["input_ids.values"].base, np.memmap)  # read from the file as asked for
        sent = pickle.dumps(opened)
        assert len(sent) < 1000  # the files' names, not their contents
        for examples in (made, opened, pickle.loads(sent)):
            data = ExampleDataset(examples)
            assert [data[(10 + i, i)] for i in range(len(rows))] == [{**r, "position": 10 + i} for i, r in
                                                                     enumerate(rows)]  # fmt: skip
            assert all(type(v[0]) is int for i in range(len(rows)) for v in data[(0, i)].values()
                       if isinstance(v, list) and v and not isinstance(v[0], tuple))  # fmt: skip
    assert Examples.from_rows(kinds[4]).count() == 2 and Examples.from_rows(kinds[1]).count() == 2


def test_a_tasks_examples_are_made_once_and_read_by_every_later_process_of_the_same_data(tmp_path, monkeypatch):
    """The first check of a task's data makes its examples and caches them under data.cache_dir; a
    later one (each rank after the launcher's preflight) reads them without reading a table, with
    the labels and what the making said. A changed file makes them again; a damaged cache is set
    aside and made again; a host's other ranks (LOCAL_RANK > 0) write nothing."""
    import finetune.tasks as tasks
    from finetune.config import load_finetune_config
    from tests.test_errors import GOLDEN

    data = tmp_path / "films.csv"
    data.write_text("text,label\n" + "".join(f"film {i} was {'good' if i % 3 else 'bad'},{i % 3 > 0}\n"
                                             for i in range(60)))  # fmt: skip
    cfg = load_finetune_config("configs/finetune/stdlib-packages.yaml", [
        f"init_from={GOLDEN}", "task.builtin=null", f"data.sources=[{{files: '{data}'}}]",
        f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}",
        "data.validation_fraction=0"])  # fmt: skip

    def check():
        task = tasks.FinetuneTask(cfg)
        task.check_data()
        rows = {split: [e[i] for i in range(len(e))] for split, e in task._examples.items()}
        return task, rows

    first, rows = check()
    assert first.examples_status.startswith("data files read, their examples made and checked, and cached in ")
    (cache,) = (tmp_path / "cache").glob("examples-*")
    assert first.labels == ["False", "True"] and list(rows) == ["train"] and len(rows["train"]) == 60
    assert first._said[0].startswith("warning: no validation data (data.validation_fraction=0 ")

    def no_tables(*args, **kwargs):
        raise AssertionError("a table was read")

    with monkeypatch.context() as m:
        m.setattr(tasks, "task_tables", no_tables)
        second, again = check()
    assert again == rows and second.labels == first.labels
    assert second.examples_status == (f"the task's examples (60 train rows) read from {cache}, made before from the "
                                      "same data files, task and tokenizer")  # fmt: skip
    assert second._said[:-1] == first._said[:-1]  # what the making said, said again

    data.write_text(data.read_text() + "film 60 was bad,False\n")
    third, more = check()
    assert third.examples_status.startswith("data files read")
    assert len(list((tmp_path / "cache").glob("examples-*"))) == 2 and len(more["train"]) == 61
    same_size = data.read_text().replace("film 0 was bad,False", "film 0 was bad,Fals3")  # within the same second
    data.write_text(same_size)
    assert tasks.FinetuneTask(cfg).labels == [] and check()[0].labels == ["Fals3", "False", "True"]
    data.write_text(same_size.replace("Fals3", "False"))
    third, more = check()
    assert third.labels == ["False", "True"]

    fresh = Path(third.examples_status.rsplit(" ", 1)[1])  # "... and cached in FOLDER"
    shard = fresh / "train" / "input_ids.values.npy"
    shard.write_bytes(shard.read_bytes()[:-8])
    fourth, remade = check()
    assert remade == more
    assert fourth._said[-2].startswith(f"warning: the examples cached in {fresh} are damaged (")
    assert len(list((tmp_path / "cache").glob(f"{fresh.name}.damaged-*"))) == 1

    data.write_text(data.read_text() + "film 61 was bad,False\n")
    before = sorted((tmp_path / "cache").iterdir())
    with monkeypatch.context() as m:
        m.setenv("LOCAL_RANK", "1")
        fifth, _ = check()
    assert fifth.examples_status == "data files read, their examples made and checked"
    assert sorted((tmp_path / "cache").iterdir()) == before

    (tmp_path / "file").write_text("")  # a cache folder that cannot be made: a warning, and the examples all the same
    cfg.data.cache_dir = str(tmp_path / "file" / "cache")
    sixth, made = check()
    assert len(made["train"]) == 62 and made["train"][:61] == more["train"]
    assert sixth._said[-2].startswith(f"warning: the examples could not be cached in {tmp_path / 'file' / 'cache'}/"
                                      "examples-")  # fmt: skip
    assert "(NotADirectoryError: Not a directory); each rank makes them itself" in sixth._said[-2]
    assert sixth.examples_status == "data files read, their examples made and checked"


def test_without_a_preflight_rank_0_makes_the_examples_and_the_other_ranks_read_them_after_it(tmp_path, monkeypatch):
    """Started without the launcher (torchrun, or hub data the preflight leaves to the ranks), a rank
    other than 0 checks its files before the process group and leaves the examples to rank 0, whose
    turn in pretrain.run's _prepare_data comes first: it reads them from the cache in ``prepare``.
    A bad file is still one line from every rank before the process group."""
    import finetune.tasks as tasks
    from finetune.config import load_finetune_config
    from pretrain.data.sources import DataError
    from tests.test_errors import GOLDEN

    data = tmp_path / "films.csv"
    data.write_text("text,label\n" + "".join(f"film {i} was {'good' if i % 3 else 'bad'},{i % 3 > 0}\n"
                                             for i in range(60)))  # fmt: skip
    argv = [f"init_from={GOLDEN}", "task.builtin=null", f"data.sources=[{{files: '{data}'}}]",
            f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}", "train.micro_batch_size=4"]
    cfg = load_finetune_config("configs/finetune/stdlib-packages.yaml", argv)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    later = tasks.FinetuneTask(cfg)
    later.check_data()
    assert later._examples is None and not (tmp_path / "cache").exists()

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    first = tasks.FinetuneTask(cfg)
    first.check_data()
    said = []
    first.prepare(0, 2, tmp_path, said.append)
    assert said[-2].startswith("data files read, their examples made and checked, and cached in ")

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    said = []
    later.prepare(1, 2, tmp_path, said.append)
    assert said[-2].startswith("the task's examples (") and later.labels == first.labels == ["False", "True"]
    assert len(later.train_batches.dataset) == len(first.train_batches.dataset) > 0

    (tmp_path / "latin.csv").write_bytes(b"text,label\ncaf\xe9,1\n")
    bad = load_finetune_config("configs/finetune/stdlib-packages.yaml",
                               [*argv, f"data.sources=[{{files: '{tmp_path / 'latin.csv'}'}}]"])  # fmt: skip
    with pytest.raises(DataError, match="latin.csv is not UTF-8 text"):
        tasks.FinetuneTask(bad).check_data()
