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
        for p in model.parameters():
            p.normal_(0.0, 0.1 if shape["arch"] == "decoder" else 0.2)
    return model


@pytest.mark.parametrize("shape", [DECODER, SEQ2SEQ], ids=["decoder", "encoder-decoder"])
def test_one_beam_is_greedy_and_the_cache_follows_the_beams(shape):
    model = model_of(shape)
    greedy = generate(model, Tok(), PROMPTS, Sampling(max_new_tokens=8, temperature=0.0))
    one = beam_search(model, Tok(), PROMPTS, num_beams=1, max_new_tokens=8)
    assert [" ".join(map(str, ids)) for ids in one] == greedy
    assert beam_search(model, Tok(), PROMPTS, 4, 8) == beam_search(model, Tok(), PROMPTS, 4, 8, use_cache=False)


@pytest.mark.parametrize("shape", [DECODER, SEQ2SEQ], ids=["decoder", "encoder-decoder"])
def test_beam_search_finds_what_transformers_finds(shape):
    pytest.importorskip("transformers")
    model = model_of(shape)
    if shape["arch"] == "decoder":
        from pretrain.model.hf import to_hf

        hf = to_hf(model)
    else:
        from pretrain.model.hf_t5 import t5_to_hf

        hf = t5_to_hf(model)
    hf.generation_config.eos_token_id = None  # no end-of-text: every beam runs to max_new_tokens
    hf.config.eos_token_id = None
    ours = beam_search(model, Tok(), PROMPTS, num_beams=4, max_new_tokens=12)
    greedy = beam_search(model, Tok(), PROMPTS, num_beams=1, max_new_tokens=12)
    assert ours != greedy  # the beams found something greedy decoding did not
    for prompt, got in zip(PROMPTS, ours, strict=True):
        ids = torch.tensor([Tok()(prompt)["input_ids"]])
        extra = {"decoder_start_token_id": 0} if shape["arch"] != "decoder" else {}
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=4, do_sample=False,
                              max_new_tokens=12, early_stopping=True, length_penalty=1.0, pad_token_id=0, **extra)
        want = out[0, ids.shape[1]:] if shape["arch"] == "decoder" else out[0, 1:]  # T5's output starts at pad
        assert got == want.tolist(), prompt
