"""The encoder-decoder Transformer ("Attention Is All You Need", T5): a bidirectional encoder stack
reads the source; a causal decoder stack reads the target so far and cross-attends to the
encoder's output in every block; a linear layer over the vocabulary predicts the next target token.

One token embedding serves both stacks, and the output layer may share it. Everything else about
positions belongs to each stack: learned position tables and, in post-norm stacks, the norm on the
embeddings (BART: ``embed`` holds the encoder's, ``decoder_embed`` the decoder's), and position
modules: T5's relative bias (one per stack, shared by its layers; bidirectional in the encoder),
RoPE, ALiBi. Sinusoidal positions have no weights to own.
Decoding runs the encoder once; the decoder's self-attention keys and values go to a KVCache and
each layer's cross-attention keys and values of the encoder output are projected once, on the
first step, and kept in the same cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.utils.checkpoint
from torch import nn

from .attention import KVCache, build_context
from .config import ModelConfig
from .init import init_weights
from .layers import Block, build_norm
from .loss import OutputLayer, labelled
from .position import RelativeBias, build_position
from .transformer import Embeddings


def _stack_position(cfg: ModelConfig, causal: bool) -> nn.Module | None:
    if cfg.position == "relative":
        return RelativeBias(cfg, causal=causal)
    return build_position(cfg)


class EncoderDecoder(nn.Module):
    """arch=encoder-decoder. ``gather``: the model is being built partitioned (ZeRO-3), see
    pretrain.model.Transformer."""

    def __init__(self, cfg: ModelConfig, gather: Callable | None = None):
        super().__init__()
        cfg.validate()
        if cfg.arch != "encoder-decoder":
            raise ValueError(f"arch={cfg.arch!r}: EncoderDecoder builds arch=encoder-decoder")
        self.cfg = cfg
        self.embed = Embeddings(cfg)  # the shared token table, the encoder's positions and norm
        self.decoder_embed = Embeddings(cfg, own_tokens=False)  # the decoder's positions and norm
        self.encoder_position = _stack_position(cfg, causal=False)
        self.decoder_position = _stack_position(cfg, causal=True)
        self.encoder = nn.ModuleList(Block(cfg, layer=i) for i in range(cfg.num_layers))
        self.decoder = nn.ModuleList(Block(cfg.decoder_stack(), cross_attention=True, layer=cfg.num_layers + i)
                                     for i in range(cfg.decoder_layers))  # fmt: skip
        pre = cfg.norm_position == "pre"
        self.encoder_norm = build_norm(cfg) if pre else None
        self.decoder_norm = build_norm(cfg) if pre else None
        self.head = OutputLayer(cfg.d_model, cfg.vocab_size, bias=False)
        self.activation_checkpointing = False
        """Recompute each block in the backward pass instead of storing its activations."""
        self.reset_parameters(gather)

    @property
    def output(self) -> nn.Linear:
        return self.head

    def reset_parameters(self, gather: Callable | None = None) -> None:
        """As Transformer.reset_parameters, with the residual scaling over both stacks' depth."""
        init_weights(self, [*self.encoder, *self.decoder], self.cfg, gather)
        if self.cfg.tie_embeddings:
            self.head.weight = self.embed.tokens.weight

    def _positions(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        T = ids.shape[1]
        if self.cfg.position == "learned" and offset + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {offset + T} tokens is longer than the {self.cfg.max_seq_len} learned "
                             "positions")  # fmt: skip
        return torch.arange(offset, offset + T, device=ids.device)[None]  # (1, T): every row's

    def _stack(self, blocks, x, ctx, cache=None, memory=None, memory_ctx=None, weights: list | None = None):
        """``weights``: a list that each block's attention weights are appended to (see Block)."""
        for i, block in enumerate(blocks):
            if self.activation_checkpointing and self.training:
                x, _ = torch.utils.checkpoint.checkpoint(block, x, ctx, None, i, memory, memory_ctx,
                                                         use_reentrant=False)  # fmt: skip
            else:
                x, w = block(x, ctx, cache, i, memory, memory_ctx, need_weights=weights is not None)
                if weights is not None:
                    weights.append(w)
        return x

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               weights: list | None = None) -> torch.Tensor:  # fmt: skip
        """Source ids (B, S) -> the encoder's output (B, S, D). ``weights``: a list that gets each
        layer's self-attention weights (B, H, S, S)."""
        positions = self._positions(input_ids)
        ctx = build_context(self.cfg, self.encoder_position, q_len=input_ids.shape[1], positions=positions,
                            attention_mask=attention_mask, device=input_ids.device, causal=False)  # fmt: skip
        x = self._stack(self.encoder, self.embed(input_ids, positions), ctx, weights=weights)
        return self.encoder_norm(x) if self.encoder_norm is not None else x

    def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None, return_attention: bool = False):
        """The encoder's output: what a classifier pools (see ``drop_decoder``); with
        ``return_attention``, (output, each encoder layer's attention weights), as Transformer's."""
        weights = [] if return_attention else None
        x = self.encode(input_ids, attention_mask, weights)
        return (x, weights) if return_attention else x

    def drop_decoder(self) -> None:
        """Keep the embedding and the encoder stack only (classification reads the pooled encoder
        output; unused weights would upset ZeRO)."""
        self.decoder, self.decoder_position, self.decoder_norm = nn.ModuleList(), None, None
        self.decoder_embed = None
        self.head = nn.Identity()

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        weights: list | None = None,
    ) -> torch.Tensor:
        """Target ids so far (B, T) and the encoder's output -> the decoder's hidden states (B, T, D).
        attention_mask: the source's padding; decoder_attention_mask: the target's (covering the
        cache too, as in Transformer.hidden_states). ``weights``: a list that gets, per layer, the
        pair (self-attention weights (B, H, T, T), cross-attention weights (B, H, T, S))."""
        offset = cache.length if cache is not None else 0
        T = decoder_input_ids.shape[1]
        positions = self._positions(decoder_input_ids, offset)
        device = decoder_input_ids.device
        ctx = build_context(self.cfg, self.decoder_position, q_len=T, offset=offset, positions=positions,
                            attention_mask=decoder_attention_mask, device=device, causal=True)  # fmt: skip
        memory_ctx = build_context(self.cfg, None, q_len=T, attention_mask=attention_mask, memory_len=memory.shape[1],
                                   device=device)  # fmt: skip
        x = self.decoder_embed(decoder_input_ids, positions, tokens=self.embed.tokens)
        x = self._stack(self.decoder, x, ctx, cache, memory, memory_ctx, weights)
        if cache is not None:
            cache.length += T
        return self.decoder_norm(x) if self.decoder_norm is not None else x

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ):
        """Source (B, S) and target inputs (B, T) -> logits (B, T, vocab); with ``labels`` (B, T),
        IGNORE where there is none: (mean cross-entropy, number right, number labelled)."""
        memory = self.encode(input_ids, attention_mask)
        hidden = self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask)
        if labels is not None:
            hidden, target, count = labelled(hidden, labels)
            loss, correct = self.head(hidden, target)
            return loss, correct, count
        return self.head(hidden)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.embed.tokens.weight
        layers = self.cfg.decoder_layers
        return KVCache(self.cfg, batch_size, max_len, device=p.device, dtype=p.dtype, num_layers=layers)
