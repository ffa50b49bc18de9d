"""The Transformer stack and its heads: causal LM (decoder), masked LM (encoder), pooled output.

A model is a plain nn.Module built from a ModelConfig; training concerns live elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.utils.checkpoint
from torch import nn

from .attention import KVCache, build_context
from .config import ModelConfig
from .init import init_weights
from .layers import ACTIVATIONS, Block, build_norm
from .loss import OutputLayer, labelled
from .position import build_position, sinusoidal


class Embeddings(nn.Module):
    """Tokens (+ learned or sinusoidal positions) (+ token types), then norm for post-norm stacks.
    ``own_tokens=False``: the positions and norm of a stack that looks its tokens up in another
    stack's table, passed to forward (an encoder-decoder's decoder, as in BART)."""

    def __init__(self, cfg: ModelConfig, own_tokens: bool = True):
        super().__init__()
        self.cfg = cfg
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.d_model) if own_tokens else None
        self.positions = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.position == "learned" else None
        self.token_types = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.norm = build_norm(cfg) if cfg.norm_position == "post" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0

    def forward(self, input_ids, positions, token_type_ids=None, tokens: nn.Embedding | None = None):
        x = (tokens if tokens is not None else self.tokens)(input_ids)  # (B, T, D)
        if self.scale != 1.0:
            x = x * self.scale
        if self.positions is not None:
            x = x + self.positions(positions)
        elif self.cfg.position == "sinusoidal":
            x = x + sinusoidal(positions, self.cfg.d_model).to(x.dtype)
        if self.token_types is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.token_types(types)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense + activation + norm, then the decoder (tied to the embeddings)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.mlp]
        self.norm = build_norm(cfg)
        self.decoder = OutputLayer(cfg.d_model, cfg.vocab_size, bias=True)

    def forward(self, x, target=None):
        return self.decoder(self.norm(self.act(self.dense(x))), target)


class Transformer(nn.Module):
    """Decoder-only (causal LM head) or encoder-only (masked LM head) Transformer."""

    def __init__(self, cfg: ModelConfig, gather: Callable | None = None):
        """``gather``: the model is being built partitioned (DeepSpeed ZeRO-3, see
        pretrain.engine.partitioned_construction); the weights are drawn through it, the same draws
        as an unpartitioned build."""
        super().__init__()
        cfg.validate()
        if cfg.arch == "encoder-decoder":
            raise ValueError("arch='encoder-decoder' is built by pretrain.model.EncoderDecoder, not Transformer")
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        self.position = build_position(cfg)
        self.layers = nn.ModuleList(Block(cfg, layer=i) for i in range(cfg.num_layers))
        self.norm = build_norm(cfg) if cfg.norm_position == "pre" else None
        if cfg.causal:
            self.head = OutputLayer(cfg.d_model, cfg.vocab_size, bias=False)
        else:
            self.head = MLMHead(cfg)
        self.activation_checkpointing = False
        """Recompute each block in the backward pass instead of storing its activations."""
        self.reset_parameters(gather)

    @property
    def output(self) -> nn.Linear:
        """The matrix that maps hidden states to vocabulary logits (tied to the embedding or not)."""
        return self.head if self.cfg.causal else self.head.decoder

    def reset_parameters(self, gather: Callable | None = None) -> None:
        """Normal(0, init_std) weights, zero biases, unit norms; residual output projections scaled
        by 1/sqrt(2 * num_layers) so the residual stream's variance does not grow with depth.

        ``gather(params)``: a context in which partitioned parameters (DeepSpeed ZeRO-3 builds the
        model partitioned) are whole and what rank 0 writes into them is kept. The random draws are
        the same in the same order either way, so a seed gives the same weights partitioned or not
        (a matrix already tied gets its draw thrown away, as it was before the tie)."""
        init_weights(self, self.layers, self.cfg, gather)
        if self.cfg.tie_embeddings:
            self.output.weight = self.embed.tokens.weight

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_attention: bool = False,
    ):
        """input_ids (B, T) -> final hidden states (B, T, D) [, attention weights per layer].

        attention_mask: (B, S) 1 for tokens, 0 for padding; with a cache it covers the cached
        positions too (S = cached + T). position_ids default to the index in the sequence.
        document_ids (B, T): attention stays within each packed document.
        """
        T = input_ids.shape[1]
        offset = cache.length if cache is not None else 0
        if position_ids is None:
            if self.cfg.position == "learned" and offset + T > self.cfg.max_seq_len:
                raise ValueError(
                    f"sequence of {offset + T} tokens is longer than the {self.cfg.max_seq_len} learned positions"
                )
            plain = cache is None and attention_mask is None and document_ids is None and not return_attention
            if self.cfg.memory_len and plain:
                return self._by_segments(input_ids, token_type_ids)
            position_ids = torch.arange(offset, offset + T, device=input_ids.device)[None]  # (1, T): every row's
        ctx = build_context(
            self.cfg,
            self.position,
            q_len=T,
            offset=offset,
            positions=position_ids,
            attention_mask=attention_mask,
            document_ids=document_ids,
            device=input_ids.device,
        )
        x = self.embed(input_ids, position_ids, token_type_ids)
        weights = []
        for i, block in enumerate(self.layers):
            x, w = self._block(block, x, ctx, i, cache, need_weights=return_attention)
            weights.append(w)
        if cache is not None:
            cache.length += T
        if self.norm is not None:
            x = self.norm(x)
        return (x, weights) if return_attention else x

    def _block(self, block, x, ctx, i, cache=None, need_weights=False, prefix=None):
        if self.activation_checkpointing and self.training:
            return torch.utils.checkpoint.checkpoint(block, x, ctx, prefix=prefix, use_reentrant=False)
        return block(x, ctx, cache, i, need_weights=need_weights, prefix=prefix)

    def _by_segments(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """Transformer-XL's recurrence over a row: segment after segment, each layer attending over
        the segment and its memory, the layer's inputs at the memory_len positions before, kept
        without gradient. The values are those of one pass under the segment mask (build_context);
        the gradient stops at each segment's start, and each segment's scores span segment +
        memory keys, not the row."""
        length, reach = self.cfg.segment_len, self.cfg.memory_len
        memory: list[torch.Tensor | None] = [None] * len(self.layers)
        out = []
        for start in range(0, input_ids.shape[1], length):
            ids = input_ids[:, start : start + length]
            kept = 0 if memory[0] is None else memory[0].shape[1]
            positions = torch.arange(start - kept, start + ids.shape[1], device=ids.device)[None]  # memory, then ids
            ctx = build_context(self.cfg, self.position, q_len=ids.shape[1], offset=kept, positions=positions,
                                device=ids.device, segments=False)  # fmt: skip
            types = token_type_ids[:, start : start + length] if token_type_ids is not None else None
            x = self.embed(ids, positions[:, kept:], types)
            for i, block in enumerate(self.layers):
                prefix = memory[i]
                memory[i] = (x if prefix is None else torch.cat([prefix, x], dim=1))[:, -reach:].detach()
                x, _ = self._block(block, x, ctx, i, prefix=prefix)
            out.append(x)
        x = torch.cat(out, dim=1)
        return self.norm(x) if self.norm is not None else x

    def forward(
        self,
        input_ids: torch.Tensor,
        return_attention: bool = False,
        select: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ):
        """input_ids (B, T) -> logits (B, T, vocab) [, attention weights per layer (eager only)].

        select: (B, T) bool; logits only where it is True, as (N, vocab): masked LM predicts a
        few positions and need not project the rest onto the vocabulary.
        labels: (B, T) token ids to predict, IGNORE (-100) where there is none: returns instead
        (mean cross-entropy over the labelled positions, number predicted right, number labelled),
        computed without materialising the logits (pretrain.model.loss).
        """
        out = self.hidden_states(input_ids, return_attention=return_attention, **kwargs)
        hidden = out[0] if return_attention else out
        if labels is not None:
            hidden, target, count = labelled(hidden, labels)
            loss, correct = self.head(hidden, target)
            return loss, correct, count
        logits = self.head(hidden if select is None else hidden[select])
        return (logits, out[1]) if return_attention else logits

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.embed.tokens.weight
        return KVCache(self.cfg, batch_size, max_len, device=p.device, dtype=p.dtype)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, method: str) -> torch.Tensor:
    """(B, T, D) -> (B, D) for a classifier: the first token (encoders' [CLS]), the last real token
    (decoders; works with left or right padding), or the mean over real tokens."""
    if method == "first":
        return hidden[:, 0]
    mask = attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], device=hidden.device)
    if method == "last":
        idx = torch.arange(hidden.shape[1], device=hidden.device)
        last = (idx * mask.long()).argmax(dim=1)  # (B,) highest index whose mask is 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if method == "mean":
        m = mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    raise ValueError(f"pooling={method!r}: use one of 'first', 'last', 'mean'")
