"""Beam search for both families: one beam is greedy decoding, the caches follow their beams, and
the best beam is the one transformers' own generate(num_beams=...) finds with the same weights."""

import pytest
import torch

from finetune.generate import Sampling, beam_search, generate
from pretrain.model import ModelConfig, build_model


class Tok:  # token ids written as text: enough to drive generate() and beam_search()
    pad_token_id, eos_token_id = 0, None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(t) for t in text.split()]}

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(map(str, row.tolist())) for row in ids]


DECODER = dict(arch="decoder", vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=64,
               position="learned", norm="layernorm", mlp="gelu_tanh")  # GPT-2's shape  # fmt: skip
SEQ2SEQ = dict(arch="encoder-decoder", vocab_size=97, d_model=32, num_layers=2, num_decoder_layers=2, num_heads=4,
               max_seq_len=64, position="relative", relative_num_buckets=8, relative_max_distance=16, norm="rmsnorm",
               norm_eps=1e-6, mlp="geglu_tanh", bias=False, tie_embeddings=True)  # T5's shape  # fmt: skip
PROMPTS = ["5 17 42 8", "23 9 61 30"]


def model_of(shape: dict):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**shape)).eval()
    with torch.no_grad():  # every weight drawn wide (the init leaves norms at one and biases at zero)
        for name, p in model.named_parameters():
            if shape.get("norm_position") == "post" and "norm" in name:  # the last norm feeds the output layer:
                p.copy_(float(name.endswith("weight")) + 0.1 * torch.randn_like(p))  # a wide bias would pick
            else:  # the same token after any input
                p.normal_(0.0, 0.1 if shape["arch"] == "decoder" else 0.2)
    return model


@pytest.mark.parametrize("shape", [DECODER, SEQ2SEQ], ids=["decoder", "encoder-decoder"])
def test_one_beam_is_greedy_and_the_cache_follows_the_beams(shape):
    model = model_of(shape)
    greedy = generate(model, Tok(), PROMPTS, Sampling(max_new_tokens=8, temperature=0.0))
    one = beam_search(model, Tok(), PROMPTS, num_beams=1, max_new_tokens=8)
    assert [" ".join(map(str, ids)) for ids in one] == greedy
    assert beam_search(model, Tok(), PROMPTS, 4, 8) == beam_search(model, Tok(), PROMPTS, 4, 8, use_cache=False)


BART = dict(arch="encoder-decoder", vocab_size=97, d_model=32, num_layers=2, num_decoder_layers=2, num_heads=4,
            max_seq_len=64, position="learned", norm="layernorm", norm_position="post", mlp="gelu",
            tie_embeddings=True)  # BART's shape  # fmt: skip


def hf_twin(model):
    if model.cfg.arch == "decoder":
        from pretrain.model.hf import to_hf

        return to_hf(model)
    if model.cfg.position == "learned":
        from pretrain.model.hf_bart import bart_to_hf

        return bart_to_hf(model)
    from pretrain.model.hf_t5 import t5_to_hf

    return t5_to_hf(model)


@pytest.mark.parametrize("shape", [DECODER, SEQ2SEQ, BART], ids=["decoder", "t5", "bart"])
def test_beam_search_finds_what_transformers_finds(shape):
    """Without end-of-text every beam runs to max_new_tokens; then with end-of-text set to tokens
    those beams hold (so beams finish early, at different lengths) and length penalties 0, 1 and 2,
    which decide between finished beams of different lengths. An encoder-decoder's source ends
    with end-of-text, as our seq2seq data has it."""
    pytest.importorskip("transformers")
    model = model_of(shape)
    hf = hf_twin(model)
    ours = beam_search(model, Tok(), PROMPTS, num_beams=4, max_new_tokens=12)
    greedy = beam_search(model, Tok(), PROMPTS, num_beams=1, max_new_tokens=12)
    assert ours != greedy  # the beams found something greedy decoding did not
    seq2seq = shape["arch"] != "decoder"
    ends = sorted({t for row in ours for t in row[2:]})[:3]  # tokens the beams would write after a start
    cases = [(None, 1.0)] + [(eos, penalty) for eos in ends for penalty in (0.0, 1.0, 2.0)]
    lengths = set()
    for eos, penalty in cases:
        tok = Tok()
        tok.eos_token_id = eos
        got = beam_search(model, tok, PROMPTS, num_beams=4, max_new_tokens=12, length_penalty=penalty)
        for prompt, found in zip(PROMPTS, got, strict=True):
            ids = torch.tensor([tok(prompt)["input_ids"] + ([eos] if seq2seq and eos is not None else [])])
            extra = {"decoder_start_token_id": 0} if seq2seq else {}
            hf.generation_config.eos_token_id = hf.config.eos_token_id = eos
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=4, do_sample=False,
                                  max_new_tokens=12, early_stopping=True, length_penalty=penalty, pad_token_id=0,
                                  eos_token_id=eos, **extra)  # fmt: skip
            want = (out[0, 1:] if seq2seq else out[0, ids.shape[1] :]).tolist()  # T5 and BART start at pad
            want = want[: want.index(eos)] if eos in want else want  # ours stops before end-of-text
            assert found == want, (prompt, eos, penalty)
            lengths.add(len(found))
    assert len(lengths) > 2  # beams ended at several lengths: end-of-text and the penalties were in play
