"""python -m finetune.inspect on the checkpoint kinds the other commands take, and its refusals."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from finetune.inspect import main
from pretrain.config import RunConfig, save_config
from pretrain.model import ModelConfig, build_model

GOLDEN = Path(__file__).parent / "golden" / "checkpoint"  # a real step-10 DeepSpeed checkpoint of a decoder
TEXT = "def load(fp):\n    return json.loads(fp.read())"


def run(capsys, *args) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_picture(path: Path) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels[..., :3].var() > 1e-3, f"{path.name} is blank"


def test_decoder_checkpoint(tmp_path, capsys):
    out = tmp_path / "pictures"
    code, printed, err = run(capsys, GOLDEN, "--text", TEXT, "--text", "import json", "--layer", 1, "--heads", "0,2",
                             "--out", out)  # fmt: skip
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert names == {"layer1_head0.png", "layer1_head2.png", "layer1_heads.png", "overview.png", "head_entropy.png",
                     "head_distance.png", "positions.png", "attention.json"}  # fmt: skip
    for name in names - {"attention.json"}:
        assert_picture(out / name)
    record = json.loads((out / "attention.json").read_text())
    assert record["layer"] == 1 and set(record["heads"]) == {"0", "2"}
    assert len(record["entropy"]) == 2 and len(record["entropy"][0]) == 4

    # the weights written are the eager kernel's, row by row
    from finetune.inspect import load_body
    from pretrain.model.inspect import attention_weights

    model, tok, _ = load_body(str(GOLDEN))
    ids = tok(TEXT)["input_ids"]
    assert record["tokens"][0] and len(record["tokens"]) == len(ids)
    weights = attention_weights(model, torch.tensor([ids]))[1][0]  # (H, T, T) of layer 1
    for h in (0, 2):
        for i, row in enumerate(record["heads"][str(h)]):
            top = weights[h, i].topk(min(3, i + 1))
            assert [j for _, j, _ in row["top"]] == top.indices.tolist()
            np.testing.assert_allclose([w for _, _, w in row["top"]], top.values.numpy(), atol=1e-6)
            assert all(j <= i for _, j, _ in row["top"])  # a decoder's token sees only what came before
    assert "head 2" in printed and "layer 1" in printed


def export_folder(tmp_path: Path, model_cfg: ModelConfig, prefix: str = "") -> Path:
    """A consolidated export (model.safetensors + config.yaml + tokenizer) of a fresh model."""
    torch.manual_seed(0)
    model = build_model(model_cfg)
    if prefix and model_cfg.arch == "encoder-decoder":
        model.drop_decoder()  # a classifier of an encoder-decoder keeps its encoder
    folder = tmp_path / "consolidated"
    folder.mkdir(parents=True)
    state = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    if prefix:  # a classifier: its body without the LM head, and its own head
        state = {k: v for k, v in state.items() if ".head." not in k}
        state["classifier.weight"] = torch.zeros(2, model_cfg.d_model)
    save_file({k: v.clone() for k, v in state.items()}, str(folder / "model.safetensors"))
    save_config(RunConfig(model=model_cfg), folder / "config.yaml")
    shutil.copytree(GOLDEN / "tokenizer", folder / "tokenizer")
    return folder


@pytest.mark.parametrize("kind", ["encoder", "classifier"])
def test_encoder_and_classifier(tmp_path, capsys, kind):
    cfg = ModelConfig(arch="encoder" if kind == "encoder" else "decoder", vocab_size=512, d_model=32, num_layers=3,
                      num_heads=2, max_seq_len=64, position="alibi" if kind == "encoder" else "rope")  # fmt: skip
    folder = export_folder(tmp_path, cfg, prefix="body." if kind == "classifier" else "")
    out = tmp_path / "out"
    code, printed, err = run(capsys, folder, "--text", "x = [1, 2, 3]", "--out", out)
    assert code == 0, err
    record = json.loads((out / "attention.json").read_text())
    assert record["layer"] == 2 and set(record["heads"]) == {"0", "1"}  # the last layer, every head
    if kind == "encoder":  # every token sees the whole text, later ones included
        assert any(j > i for i, row in enumerate(record["heads"]["0"]) for _, j, _ in row["top"])
    assert_picture(out / "positions.png")


def test_a_performer_shows_the_attention_it_estimates_and_a_linformer_is_refused(tmp_path, capsys):
    base = dict(arch="encoder", vocab_size=512, d_model=32, num_layers=2, num_heads=2, max_seq_len=64, position="rope")
    (tmp_path / "p").mkdir(), (tmp_path / "l").mkdir()
    folder = export_folder(tmp_path / "p", ModelConfig(**base, linear_attention="performer"))
    code, _, err = run(capsys, folder, "--text", "x = [1, 2, 3]", "--out", tmp_path / "out")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "attention.json").read_text())
    assert set(record["heads"]) == {"0", "1"}
    assert_picture(tmp_path / "out" / "overview.png")
    folder = export_folder(tmp_path / "l", ModelConfig(**base, linear_attention="linformer"))
    code, _, err = run(capsys, folder, "--text", "x = [1, 2, 3]", "--out", tmp_path / "none")
    assert code == 2 and "no token-by-token attention to draw" in err and len(err.strip().splitlines()) == 1, err


def test_a_text_longer_than_the_model_is_cut_to_its_positions_and_said(tmp_path, capsys):
    from pretrain import checkpoint as ckpt
    from pretrain.data.tokenizer import load_tokenizer

    positions, text = ckpt.saved_config(GOLDEN).model.max_seq_len, "x = 1; " * 100
    n = len(load_tokenizer(GOLDEN / "tokenizer")(text)["input_ids"])
    code, _, err = run(capsys, GOLDEN, "--text", text, "--heads", "0", "--out", tmp_path / "p")
    assert code == 0, err
    assert n > positions and f"warning: text 1 has {n} tokens; the first {positions} are shown (model.max_seq_len=" \
        f"{positions})" in err  # fmt: skip
    assert len(json.loads((tmp_path / "p" / "attention.json").read_text())["tokens"]) == positions


def test_characters_split_over_byte_tokens_are_labelled_with_the_character():
    """Byte-level BPE spells a CJK character or an emoji with several tokens, each of which decodes to
    U+FFFD alone: the pictures' axes were rows of replacement characters for any non-Latin text."""
    from finetune.inspect import load_body, token_labels

    _, tok, _ = load_body(str(GOLDEN))
    ids = tok("日本語 🎉 café", add_special_tokens=False)["input_ids"]
    labels = token_labels(tok, ids)
    assert len(labels) == len(ids) and "\ufffd" not in "".join(labels)
    assert [x for x in labels if x.startswith("語")] == ["語 1/3", "語 2/3", "語 3/3"]
    assert [x for x in labels if x.startswith("🎉")] == ["🎉 1/4", "🎉 2/4", "🎉 3/4", "🎉 4/4"]
    assert labels[-2:] == ["é 1/2", "é 2/2"]


def test_a_character_no_installed_font_draws_is_written_as_its_code_point(tmp_path):
    """matplotlib's own font has no CJK: such labels were empty boxes, with a warning per glyph."""
    import warnings

    from pretrain import pictures

    covered = pictures._fonts()[1]
    figure = pictures.head(torch.eye(3), ["日 1/3", "é", "x"], "a head")
    drawn = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert drawn == ["日 1/3" if ord("日") in covered else "U+65E5 1/3", "é", "x"]  # DejaVu Sans has é
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font(s)" would fail here
        assert_picture(pictures.save(figure, tmp_path / "head.png"))


T5 = dict(arch="encoder-decoder", vocab_size=512, d_model=32, num_layers=3, num_decoder_layers=2, num_heads=2,
          max_seq_len=64, position="relative", norm="rmsnorm", norm_eps=1e-6, mlp="geglu_tanh", bias=False,
          tie_embeddings=True, relative_num_buckets=8, relative_max_distance=32)  # fmt: skip


def test_an_encoder_decoders_three_attentions_are_the_ones_transformers_t5_returns():
    """Encoder self-attention, the decoder's masked self-attention and its cross-attention to the
    source, on a padded batch, against T5ForConditionalGeneration holding the same weights
    (output_attentions), where a query is a real token."""
    from pretrain.model.hf_t5 import t5_to_hf
    from pretrain.model.inspect import seq2seq_attention_weights

    torch.manual_seed(0)
    model = build_model(ModelConfig(**T5)).eval()
    hf = t5_to_hf(model).eval()
    hf.set_attn_implementation("eager")
    src, tgt = torch.randint(5, 500, (2, 9)), torch.randint(5, 500, (2, 5))
    mask, target_mask = torch.ones_like(src), torch.ones_like(tgt)
    mask[1, 6:], target_mask[1, 3:] = 0, 0
    ours = seq2seq_attention_weights(model, src, tgt, mask, target_mask)
    with torch.no_grad():
        out = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, decoder_attention_mask=target_mask,
                 output_attentions=True)  # fmt: skip
    theirs = {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions, "cross": out.cross_attentions}
    assert [len(ours[k]) for k in theirs] == [3, 2, 2]
    for name, layers in theirs.items():
        rows = (mask if name == "encoder" else target_mask).bool()  # the real queries of each sequence
        for a, b in zip(ours[name], layers, strict=True):
            assert a.shape == b.shape
            for i in range(2):
                torch.testing.assert_close(a[i][:, rows[i]], b[i][:, rows[i]].float(), atol=1e-5, rtol=1e-4)
    assert ours["cross"][0][1, :, :, 6:].abs().max() == 0  # no weight on the second source's padding
    assert torch.triu(ours["decoder"][1][0], diagonal=1).abs().max() == 0  # nor on later target tokens


def test_an_encoder_decoder_is_drawn_stack_by_stack_and_its_classifier_as_an_encoder(tmp_path, capsys):
    folder = export_folder(tmp_path, ModelConfig(**T5))
    out = tmp_path / "out"
    code, printed, err = run(capsys, folder, "--text", TEXT, "--text", "import os", "--target", "load json",
                             "--heads", "1", "--out", out)  # fmt: skip
    assert code == 0, err
    record = json.loads((out / "attention.json").read_text())
    assert record["target"] == "load json" and record["arch"] == "encoder-decoder"
    enc, dec, cross = record["encoder"], record["decoder"], record["cross"]
    assert enc["layer"] == 2 and dec["layer"] == 1 and cross["layer"] == 1  # the last of each stack
    assert enc["tokens"][-1] == "<|endoftext|>"  # the source as pretraining wrote it
    assert dec["tokens"][0] == "<|pad|>" and cross["tokens"] == dec["tokens"] and cross["keys"] == enc["tokens"]
    assert len(cross["heads"]["1"]) == len(dec["tokens"]) and "distance" not in cross
    assert all(j < len(enc["tokens"]) for row in cross["heads"]["1"] for _, j, _ in row["top"])
    names = {p.name for p in out.iterdir()}
    kinds = ("head1.png", "heads.png")
    stacks = {f"{stack}_{n}" for stack, layer in (("encoder", 2), ("decoder", 1), ("cross", 1))
              for n in [f"layer{layer}_{kind}" for kind in kinds] + ["overview.png", "head_entropy.png"]}  # fmt: skip
    assert names == stacks | {"encoder_head_distance.png", "decoder_head_distance.png", "encoder_positions.png",
                              "decoder_positions.png", "attention.json"}  # fmt: skip
    for name in names - {"attention.json"}:
        assert_picture(out / name)
    assert "cross-attention (target to source), layer 1" in printed

    code, _, err = run(capsys, folder, "--text", "x", "--layer", "2", "--out", tmp_path / "no")
    assert code == 2 and "--layer 2: this model's encoder has 3 layers and its decoder 2: give one of 0-1" in err
    code, _, err = run(capsys, GOLDEN, "--text", "x", "--target", "y", "--out", tmp_path / "no")
    assert code == 2 and "--target: only an encoder-decoder reads a target; this model's arch is decoder" in err

    classifier = export_folder(tmp_path / "cls", ModelConfig(**T5), prefix="body.")
    code, _, err = run(capsys, classifier, "--text", TEXT, "--out", tmp_path / "cls-out")
    assert code == 0, err
    record = json.loads((tmp_path / "cls-out" / "attention.json").read_text())
    assert record["layer"] == 2 and "cross" not in record  # the encoder it kept, drawn as an encoder's


@pytest.mark.parametrize(
    "args, message",
    [
        (["--text", "   "], "text 1 of 1 is empty"),
        ([], "give the text to look at"),
        (["--text", "x", "--layer", "2"], "--layer 2: this model has 2 layers (0-1)"),
        (["--text", "x", "--layer", "-1"], "--layer -1: this model has 2 layers"),
        (["--text", "x", "--heads", "1,4"], "--heads '1,4': this model has 4 heads per layer (0-3)"),
        (["--text", "x", "--heads", "a"], "--heads 'a': give head numbers"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code, _, err = run(capsys, GOLDEN, *args, "--out", out)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_unreadable_checkpoints_are_one_line(tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(GOLDEN, broken)
    shard = broken / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:1000])
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("not a checkpoint")
    for source in (broken, stray, tmp_path / "missing"):
        code, _, err = run(capsys, source, "--text", "x", "--out", tmp_path / "out")
        assert code == 2 and str(source) in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists()
