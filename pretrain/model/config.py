"""ModelConfig: the shape and the choices of one Transformer.

Named sizes live in YAML under ``configs/model/``; this file only defines what a size may say and
checks that it can be built. It imports nothing but the standard library so that the run config,
the launcher and tests can read it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Arch = Literal["decoder", "encoder", "encoder-decoder"]
Position = Literal["learned", "sinusoidal", "rope", "alibi", "relative", "disentangled", "none"]
Kernel = Literal["sdpa", "flash", "flex", "eager", "flash_attn"]
Norm = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]
MLP = Literal["gelu", "gelu_tanh", "relu", "swiglu", "geglu", "geglu_tanh"]
LinearAttention = Literal["performer", "linformer"]

# Which attention kernels can express which extra terms. `flash` is SDPA restricted to the flash
# backend, which takes no mask or bias; the flash-attn package takes ALiBi slopes and a window
# but no bucketed bias.
# DeBERTa's disentangled terms depend on the queries and keys themselves, so they come as a dense
# (B, H, T, S) bias that only eager and sdpa take.
KERNELS_WITH_BIAS = {"alibi": ("eager", "sdpa", "flex", "flash_attn"), "relative": ("eager", "sdpa", "flex"),
                     "disentangled": ("eager", "sdpa")}  # fmt: skip
KERNELS_WITH_WINDOW = ("eager", "sdpa", "flex", "flash_attn")
KERNELS_WITH_GLOBAL = ("eager", "sdpa", "flex")  # flash-attn's window has no exceptions
KERNELS_WITH_MEMORY = ("eager", "sdpa", "flex")  # a window that depends on the query's segment
# Padded batches (fine-tuning, batched decoding, an encoder-decoder's cross-attention over padded
# sources) need a padding mask, which `flash` and (here) the flash-attn package do not take.
KERNELS_WITH_PADDING = ("sdpa", "flex", "eager")


@dataclass
class ModelConfig:
    arch: Arch = "decoder"
    """decoder: causal self-attention, trained as a causal LM. encoder: bidirectional, masked LM.
    encoder-decoder: a bidirectional encoder stack and a causal decoder stack that cross-attends to
    the encoder's output (the original Transformer, T5)."""
    vocab_size: int = 50304
    """Rows of the token embedding (round up to a multiple of 64 for fast matmuls)."""
    d_model: int = 768
    """Width of the residual stream."""
    num_layers: int = 12
    """Transformer blocks in the stack (the encoder's, for encoder-decoder)."""
    num_decoder_layers: int | None = None
    """encoder-decoder: blocks in the decoder stack; None means num_layers."""
    num_heads: int = 12
    """Attention (query) heads; d_model must divide by it."""
    num_kv_heads: int | None = None
    """Key/value heads: None or num_heads is multi-head, 1 is multi-query, else grouped-query."""
    ffn_hidden_size: int | None = None
    """Inner width of the MLP; None means 4 * d_model."""
    max_seq_len: int = 1024
    """Longest sequence the model is built for (rows of a learned position table)."""

    position: Position = "learned"
    """learned (GPT-2, BERT), sinusoidal (original Transformer), rope (LLaMA), alibi, relative (T5),
    disentangled (DeBERTa: learned embeddings of bucketed distances, projected by each layer's own
    query and key matrices, score content-to-position and position-to-content; encoders only)."""
    rope_base: float = 10000.0
    """RoPE's theta: frequencies are rope_base ** (-2i / rotated dims) (LLaMA 10000; larger for long contexts)."""
    rotary_fraction: float = 1.0
    """Fraction of each head's dimensions that RoPE rotates (GPT-NeoX rotates 0.25)."""
    relative_num_buckets: int = 32
    """relative (T5): distance buckets (half exact, half log-spaced). disentangled (DeBERTa's
    position_buckets, 256 in v3): distances under half this are exact, longer ones log-spaced; the
    distance table has twice this many rows."""
    relative_max_distance: int = 128
    """relative: distances beyond this share the last bucket. disentangled (DeBERTa's
    max_relative_positions, 512 in v3): the distance the log-spaced buckets reach."""

    norm: Norm = "layernorm"
    """layernorm (GPT-2, BERT) or rmsnorm (LLaMA, T5)."""
    norm_eps: float = 1e-5
    """Epsilon inside the norms (1e-5 GPT-2/LLaMA, 1e-12 BERT, 1e-6 T5)."""
    norm_position: NormPosition = "pre"
    """pre: norm inside each residual branch (GPT-2, LLaMA) plus a final norm.
    post: norm after each residual add (original Transformer, BERT) plus a norm on the embeddings."""
    mlp: MLP = "gelu"
    """gelu/gelu_tanh/relu: two-matrix MLP. swiglu/geglu/geglu_tanh: gated MLP with three matrices
    (geglu_tanh: the tanh-approximated GELU gate of T5 v1.1 and Gemma)."""
    bias: bool = True
    """Biases in the linear layers (and LayerNorm)."""
    tie_embeddings: bool = True
    """Share the token embedding with the output layer."""
    scale_embeddings: bool = False
    """Multiply token embeddings by sqrt(d_model), as the original Transformer does."""
    type_vocab_size: int = 0
    """Segment (token type) embeddings, as BERT has for sentence pairs; 0 for none."""

    dropout: float = 0.0
    """Dropout on embeddings and on each residual branch."""
    attention_dropout: float = 0.0
    """Dropout on the attention weights (0 for pretraining at scale)."""
    init_std: float = 0.02
    """Standard deviation of the normal init of weight matrices and embeddings."""
    scaled_residual_init: bool = True
    """Scale the init of each branch's output projection by 1/sqrt(2 * num_layers) (GPT-2)."""

    attention: Kernel = "sdpa"
    """sdpa (torch picks flash/cuDNN/memory-efficient), flash (force the flash backend),
    flex (FlexAttention), eager (reference math), flash_attn (the flash-attn package, GPU)."""
    sliding_window: int | None = None
    """Each query sees at most this many keys (itself included) behind it; None for no window."""
    linear_attention: LinearAttention | None = None
    """Self-attention in time linear in the length instead of softmax over every key (the kernel
    setting then applies to cross-attention only): performer (FAVOR+ random features; causal or
    bidirectional) or linformer (keys and values projected along the sequence; bidirectional
    stacks only: an encoder, or an encoder-decoder's encoder, its decoder staying exact). None:
    exact attention."""
    linear_attention_dim: int = 64
    """performer: random features per head; linformer: the length keys and values are projected to."""
    linear_attention_redraw: int = 0
    """performer: draw new random features every this many optimizer steps, as the Performer paper
    does for stable training (the draw is a buffer of the model: saved, resumed, exported); 0 keeps
    the first draw."""
    memory_len: int = 0
    """Transformer-XL's segment-level recurrence (decoders): each row is run as consecutive segments
    of ``segment_len`` tokens, and each layer attends over its own segment and the layer's inputs at
    the previous ``memory_len`` positions, kept from the segments before without gradient (the
    reach grows by memory_len per layer). Attention then costs segment x (segment + memory) per
    segment instead of the row squared. Decoding, padded batches and a cache give the same values
    through a mask. 0 for none."""
    segment_len: int | None = None
    """With memory_len: the length of the segments a row is cut into (positions from 0 in the row,
    left padding not counted)."""
    global_tokens: int = 0
    """Sparse attention with a sliding window (Longformer, BigBird; a causal stack's attention sinks,
    StreamingLLM): the first this many positions see every position and every position sees them,
    past the window (a causal stack still sees no later key). 0 for none."""

    @property
    def causal(self) -> bool:
        return self.arch == "decoder"

    def for_padding(self, attention: str = "auto") -> ModelConfig:
        """This shape with a kernel that takes padding masks: ``attention`` where given, else the
        model's own kernel where it can, else sdpa (the same weights and math; on a GPU, SDPA still
        picks a flash kernel for batches without padding). A ValueError for a kernel that cannot."""
        check_padding_kernel(attention)
        if attention == "auto":
            attention = self.attention if self.attention in KERNELS_WITH_PADDING else "sdpa"
        return replace(self, attention=attention)

    @property
    def tied_output_keys(self) -> set[str]:
        """State-dict name of the output matrix when it is the token embedding (saved and exported
        once, as the embedding); empty when untied."""
        if not self.tie_embeddings:
            return set()
        return {"head.decoder.weight" if self.arch == "encoder" else "head.weight"}

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden_size or 4 * self.d_model

    @property
    def gated(self) -> bool:
        return self.mlp in ("swiglu", "geglu", "geglu_tanh")

    def decoder_stack(self) -> ModelConfig:
        """encoder-decoder: the config the decoder's blocks are built from, less Linformer (which
        cannot be causal, so is the encoder's only)."""
        return replace(self, linear_attention=None) if self.linear_attention == "linformer" else self

    @property
    def decoder_layers(self) -> int:
        """encoder-decoder: blocks in the decoder stack."""
        return self.num_decoder_layers or self.num_layers

    def validate(self) -> None:
        """Raise ValueError naming the field, its value and what would be valid."""
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be a positive integer")
        if self.num_decoder_layers is not None and (self.num_decoder_layers < 1 or self.arch != "encoder-decoder"):
            raise ValueError(f"num_decoder_layers={self.num_decoder_layers}: a positive integer, and only for "
                             "arch=encoder-decoder (null otherwise)")  # fmt: skip
        if self.arch == "encoder-decoder" and self.type_vocab_size:
            raise ValueError(f"type_vocab_size={self.type_vocab_size}: segment embeddings are for encoders "
                             "(BERT); use 0 with arch=encoder-decoder")  # fmt: skip
        if self.d_model % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads}: must divide d_model={self.d_model} "
                f"(divisors near it: {_divisors_near(self.d_model, self.num_heads)})"
            )
        if self.num_kv_heads is not None and (self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads):
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads}: must divide num_heads={self.num_heads} "
                f"(valid: {[d for d in range(1, self.num_heads + 1) if self.num_heads % d == 0]})"
            )
        if self.ffn_hidden_size is not None and self.ffn_hidden_size < 1:
            raise ValueError(f"ffn_hidden_size={self.ffn_hidden_size}: must be positive or null")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: must be in [0, 1)")
        if self.init_std <= 0 or self.norm_eps <= 0:
            raise ValueError(f"init_std={self.init_std}, norm_eps={self.norm_eps}: both must be > 0")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size={self.type_vocab_size}: must be >= 0")
        if self.position == "rope":
            rot = int(self.head_dim * self.rotary_fraction)
            if not 0 < self.rotary_fraction <= 1 or rot % 2:
                raise ValueError(
                    f"rotary_fraction={self.rotary_fraction}: must be in (0, 1] and rotate an even number "
                    f"of the head's {self.head_dim} dimensions (got {rot})"
                )
            if self.rope_base <= 0:
                raise ValueError(f"rope_base={self.rope_base}: must be > 0")
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"d_model={self.d_model}: sinusoidal positions need an even width")
        if self.position == "relative" and (self.relative_num_buckets < 2 or self.relative_max_distance < 1):
            raise ValueError(
                f"relative_num_buckets={self.relative_num_buckets}, relative_max_distance="
                f"{self.relative_max_distance}: need at least 2 buckets and a distance >= 1"
            )
        if self.position == "disentangled":
            self._check_disentangled()
        if self.position in KERNELS_WITH_BIAS and self.attention not in KERNELS_WITH_BIAS[self.position]:
            raise ValueError(
                f"attention={self.attention!r} cannot add the {self.position} position bias; "
                f"use one of {list(KERNELS_WITH_BIAS[self.position])}"
            )
        if self.sliding_window is not None:
            if self.sliding_window < 1:
                raise ValueError(f"sliding_window={self.sliding_window}: must be >= 1 or null")
            if self.attention not in KERNELS_WITH_WINDOW:
                raise ValueError(
                    f"attention={self.attention!r} has no sliding window; use one of {list(KERNELS_WITH_WINDOW)}"
                )
        if self.linear_attention is not None:
            self._check_linear_attention()
        elif self.linear_attention_redraw:
            raise ValueError(f"linear_attention_redraw={self.linear_attention_redraw}: redraws performer's random "
                             "features; set linear_attention=performer or drop it")  # fmt: skip
        if self.memory_len or self.segment_len is not None:
            self._check_memory()
        if self.global_tokens:
            if self.global_tokens < 0:
                raise ValueError(f"global_tokens={self.global_tokens}: must be >= 0 (0 for none)")
            if self.sliding_window is None:
                raise ValueError(f"global_tokens={self.global_tokens}: positions that see past the sliding "
                                 "window; set sliding_window too (without one, every position sees every "
                                 "other)")  # fmt: skip
            if self.attention not in KERNELS_WITH_GLOBAL:
                raise ValueError(f"attention={self.attention!r} has no global tokens; use one of "
                                 f"{list(KERNELS_WITH_GLOBAL)}")  # fmt: skip


    def _check_memory(self) -> None:
        if self.memory_len < 0 or (self.memory_len == 0 and self.segment_len is not None):
            raise ValueError(f"memory_len={self.memory_len}, segment_len={self.segment_len}: segment_len is the "
                             "length of the segments the memory carries across; set memory_len >= 1 with it, or "
                             "both to 0 and null")  # fmt: skip
        if self.segment_len is None or self.segment_len < 1:
            raise ValueError(f"segment_len={self.segment_len}: memory_len={self.memory_len} needs the length of the "
                             "segments each row is run in (a positive integer, such as memory_len)")  # fmt: skip
        if self.arch != "decoder":
            raise ValueError(f"memory_len={self.memory_len}: Transformer-XL's recurrence is for causal stacks; "
                             f"arch={self.arch!r} is not one (use arch=decoder)")  # fmt: skip
        if self.attention not in KERNELS_WITH_MEMORY:
            raise ValueError(f"attention={self.attention!r} has no window per segment, which memory_len needs; use "
                             f"one of {list(KERNELS_WITH_MEMORY)}")  # fmt: skip
        other = {k: v for k, v in (("sliding_window", self.sliding_window), ("global_tokens", self.global_tokens),
                                   ("linear_attention", self.linear_attention)) if v}  # fmt: skip
        if other:
            raise ValueError(f"memory_len={self.memory_len} with {other}: the memory is the window here; drop "
                             f"{' and '.join(other)}")  # fmt: skip

    def _check_disentangled(self) -> None:
        if self.arch != "encoder":
            raise ValueError(f"position='disentangled' (DeBERTa) is built for encoders; arch={self.arch!r} has a "
                             "causal stack (use relative, T5's bias, or arch=encoder)")  # fmt: skip
        if self.kv_heads != self.num_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads}: position='disentangled' projects the distances "
                             f"with every head's own keys; use num_kv_heads=null or {self.num_heads}")  # fmt: skip
        half = self.relative_num_buckets // 2
        if self.relative_num_buckets < 2 or self.relative_max_distance <= half + 1:
            raise ValueError(f"relative_num_buckets={self.relative_num_buckets}, relative_max_distance="
                             f"{self.relative_max_distance}: position='disentangled' needs at least 2 buckets "
                             f"and a distance above half the buckets plus one ({half + 1}); DeBERTa-v3 has "
                             "256 and 512")  # fmt: skip

    def _check_linear_attention(self) -> None:
        kind = self.linear_attention
        if self.linear_attention_dim < 1:
            raise ValueError(f"linear_attention_dim={self.linear_attention_dim}: must be a positive integer")
        if self.linear_attention_redraw < 0 or (self.linear_attention_redraw and kind != "performer"):
            raise ValueError(f"linear_attention_redraw={self.linear_attention_redraw}: a number of steps >= 0, and "
                             f"only for performer's random features (linear_attention={kind!r})")  # fmt: skip
        if self.position in KERNELS_WITH_BIAS:
            raise ValueError(f"linear_attention={kind!r} forms no score matrix to add the {self.position} bias to; "
                             "use position learned, sinusoidal, rope or none")  # fmt: skip
        if self.sliding_window is not None:
            raise ValueError(f"linear_attention={kind!r} has no sliding window (it sees every key it may); "
                             "drop sliding_window or linear_attention")  # fmt: skip
        if kind == "linformer" and self.arch == "decoder":
            raise ValueError("linear_attention='linformer' mixes positions along the sequence, so it cannot "
                             "be causal; arch='decoder' is a causal stack (use performer, or an encoder or "
                             "encoder-decoder, whose encoder takes it)")  # fmt: skip


def check_padding_kernel(attention: str) -> None:
    """A ValueError naming ``attention`` when it cannot run padded batches (``auto``: pick one that can)."""
    if attention != "auto" and attention not in KERNELS_WITH_PADDING:
        raise ValueError(f"attention={attention!r} takes no padding mask, which padded batches need (and an "
                         f"encoder-decoder's cross-attention over padded sources); use one of "
                         f"{['auto', *KERNELS_WITH_PADDING]}")  # fmt: skip


def _divisors_near(n: int, k: int) -> list[int]:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return sorted(divisors, key=lambda d: abs(d - k))[:3]
