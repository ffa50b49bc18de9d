"""The fine-tuning config: a run config plus where the weights come from and what the task is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pretrain.config import ConfigError, RunConfig, TrainConfig, load_config
from pretrain.model.config import check_padding_kernel


@dataclass
class TaskConfig:
    kind: Literal["classify", "tag", "qa", "generate", "seq2seq"] = "classify"
    """classify: a label per text (or text pair). tag: a label per word (named entities, parts of
    speech). qa: extractive question answering (the answer a span of the context). generate:
    supervised fine-tuning of a decoder on prompt/response pairs, with the loss on response tokens
    only. seq2seq: an encoder-decoder reads the prompt (source) and learns to write the response
    (target)."""
    builtin: Literal["stdlib-packages", "stdlib-bodies", "stdlib-names"] | None = None
    """A demo task made from the built-in corpus (no download): stdlib-packages labels a function
    with the top-level standard-library package it comes from; stdlib-bodies asks for a
    function's body from its signature and docstring; stdlib-names for a function's name from its
    docstring and body. Replaces data.sources."""
    text_column: str = "text"
    """classify: the column with the text."""
    text_pair_column: str | None = None
    """classify: a second text column for pair tasks (NLI, similarity); None for single texts."""
    label_column: str = "label"
    """classify: the column with the label (names or numbers, mapped to ids and saved as labels.json)."""
    tokens_column: str = "tokens"
    """tag: the column of each example's words (a list of words; a text is split at whitespace)."""
    tags_column: str = "ner_tags"
    """tag: the column of each word's tag (a list as long as the words: names such as B-PER, or
    numbers; datasets' ClassLabel numbers are read as their names). Tags in the BIO scheme are also
    scored by entity."""
    question_column: str = "question"
    """qa: the column with the question."""
    context_column: str = "context"
    """qa: the column with the text the answer is a span of."""
    answers_column: str = "answers"
    """qa: the column with the answer: SQuAD's {text: [...], answer_start: [...]} (several right
    answers; empty lists: the context holds none, as in SQuAD 2.0), or a text found in the context."""
    doc_stride: int | None = None
    """qa: a context too long for data.seq_len with its question is read in windows that overlap by
    this many tokens (HF's doc_stride; at most a third of data.seq_len); None: a quarter of
    data.seq_len. Each window is its own training example (a window without the answer learns "no
    answer"); predictions take the best span over an example's windows."""
    prompt_column: str = "prompt"
    """generate, seq2seq: the column with the prompt or source (no loss on it)."""
    response_column: str = "response"
    """generate, seq2seq: the column with the response or target the model learns to produce."""
    prompt_template: str | list[str] | None = None
    """generate, seq2seq: write each prompt from the example's columns instead of reading
    prompt_column (instruction tables). alpaca: Stanford Alpaca's prompt over columns instruction
    and input (its shorter form where input is blank); or a text with {column} fields, e.g.
    "Question: {question}\nAnswer: "; or a list of such texts, each example taking the first whose
    fields are all filled (else the last, blanks written empty). Checkpoints keep it, and
    finetune.generate and finetune.evaluate write prompts with it."""
    messages_column: str | None = None
    """generate: a column of conversations, used instead of prompt_column and response_column: each
    a list of turns, {role, content} (OpenAI, HF chat) or ShareGPT's {from, value}, with roles
    system, user, assistant, tool (human, gpt). The loss is on the assistant's turns only."""
    tools_column: str = "tools"
    """generate with messages_column: the column of the tools each conversation may call (a list of
    JSON schemas, OpenAI's and HF's {type: function, function: {name, description, parameters}}, or
    its JSON text; null: none), given to the chat template. Read where the data has it; a name
    other than tools must be a column."""
    chat_template: str = "auto"
    """generate with messages_column: how a conversation is written as text. auto: the tokenizer's
    chat template where it has one, else plain; plain: each turn as <|role|>, a line break, its
    text and end-of-text; or a Jinja template file (HF's chat-template format). Checkpoints carry
    it, and finetune.generate writes conversations with it."""
    target_len: int | None = None
    """seq2seq: the most target tokens (with the end-of-text) the decoder reads; None: data.seq_len.
    A longer target is refused, not cut (a cut target never learns to end)."""
    attention: Literal["auto", "sdpa", "flex", "eager", "flash", "flash_attn"] = "auto"
    """The attention kernel fine-tuning (and inference from it) runs: auto keeps the checkpoint's
    where it takes the padding mask that padded batches need, else sdpa (same weights; a model
    pretrained with flash or flash_attn). One of auto, sdpa, flex, eager."""
    pooling: Literal["auto", "first", "last", "mean"] = "auto"
    """auto: the first token for encoders ([CLS]), the last real token for decoders, the mean of
    the encoder's output for encoder-decoders."""
    head: Literal["hf", "linear"] = "hf"
    """classify: hf is the head of transformers' XForSequenceClassification for the model's family,
    so the classifier exports as that class: BERT a dense layer and tanh on the pooled token, then
    a linear layer; DeBERTa the same with GELU; GPT-2 and LLaMA a linear layer without a bias.
    linear: a linear layer with a bias on the pooled output (what a model of no HF family gets,
    and what checkpoints written before this setting have)."""
    freeze_body: bool = False
    """Train the classification head only."""
    layer_lr_decay: float = 1.0
    """Layer-wise learning rates: layer l of L trains at lr * layer_lr_decay ** (L - l); the
    embeddings at lr * layer_lr_decay ** (L + 1); heads at lr. 1.0 turns it off."""
    classifier_dropout: float = 0.1
    """Dropout on the pooled output before the classification head."""
    max_train_examples: int | None = None
    """Train on this many examples (a seeded random subset, the same in every process); None: all.
    For low-data comparisons and quick tries; validation is never cut."""

    lora_rank: int = 0
    """LoRA (peft): rank of the adapters on the body's lora_targets, which then train alone (with the
    task's head); 0 trains every weight. 8-64 is usual."""
    lora_alpha: float = 16.0
    """LoRA: the adapters' output is scaled by lora_alpha / lora_rank."""
    lora_dropout: float = 0.0
    """LoRA: dropout on the adapters' input."""
    lora_targets: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"])
    """LoRA: the body's linear layers that get adapters (module names, matched at the end)."""

    def pooling_for(self, arch: str) -> str:
        """The pooling a model of ``arch`` uses under this setting (``auto`` resolved)."""
        if self.pooling != "auto":
            return self.pooling
        return {"encoder": "first", "decoder": "last"}.get(arch, "mean")

    def _check_prompt_template(self) -> None:
        from finetune.prompts import PromptTemplate

        if self.kind in ("classify", "tag", "qa"):
            raise ValueError(f"prompt_template with kind={self.kind}: a prompt template writes the prompts of "
                             "kind=generate or seq2seq from a table's columns")  # fmt: skip
        if self.messages_column is not None or self.builtin:
            given = f"messages_column={self.messages_column!r}" if self.messages_column else f"builtin={self.builtin!r}"
            raise ValueError(f"prompt_template with {given}: those examples come with their prompts; drop one")
        columns = PromptTemplate(self.prompt_template).columns
        if self.response_column in columns:
            raise ValueError(f"prompt_template reads column {self.response_column!r}, the response_column: the "
                             "prompt would hold the answer the model learns to write")  # fmt: skip

    def validate(self) -> None:
        check_padding_kernel(self.attention)
        if self.messages_column is not None and self.kind != "generate":
            raise ValueError(f"messages_column={self.messages_column!r} with kind={self.kind}: conversations are for "
                             "kind=generate (a decoder learns the assistant's turns)")  # fmt: skip
        if self.messages_column is not None and self.builtin:
            raise ValueError(f"messages_column={self.messages_column!r} with builtin={self.builtin!r}: the built-in "
                             "task has prompts and responses; drop one")  # fmt: skip
        if self.prompt_template is not None:
            self._check_prompt_template()
        if self.chat_template != "auto":
            from finetune.chat import check_template_setting

            check_template_setting(self.chat_template)
        if self.target_len is not None and self.target_len < 2:
            raise ValueError(f"target_len={self.target_len}: must be >= 2 (a token and the end-of-text), or null "
                             "for data.seq_len")  # fmt: skip
        if self.doc_stride is not None and self.doc_stride < 0:
            raise ValueError(f"doc_stride={self.doc_stride}: must be >= 0 (tokens that windows share), or null for a "
                             "quarter of data.seq_len")  # fmt: skip
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise ValueError(f"layer_lr_decay={self.layer_lr_decay}: must be in (0, 1]")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise ValueError(f"max_train_examples={self.max_train_examples}: must be >= 1 (or null for all)")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout={self.classifier_dropout}: must be in [0, 1)")
        if self.lora_rank < 0 or (self.lora_rank and self.lora_alpha <= 0):
            raise ValueError(f"lora_rank={self.lora_rank}, lora_alpha={self.lora_alpha}: need rank >= 0 (0: off) "
                             "and alpha > 0")  # fmt: skip
        if self.lora_rank and self.freeze_body:
            raise ValueError("lora_rank with freeze_body: LoRA already freezes the body but for its adapters; "
                             "choose one")  # fmt: skip
        if not self.lora_targets or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_targets={self.lora_targets}, lora_dropout={self.lora_dropout}: give at least "
                             "one target (e.g. attn.qkv) and a dropout in [0, 1)")  # fmt: skip
        if self.builtin == "stdlib-packages" and self.kind != "classify":
            raise ValueError("builtin='stdlib-packages' is a classification task: set task.kind=classify")
        if self.builtin == "stdlib-names" and self.kind != "seq2seq":
            raise ValueError("builtin='stdlib-names' is a sequence-to-sequence task: set task.kind=seq2seq (an "
                             "encoder-decoder)")  # fmt: skip
        if self.builtin and self.kind in ("tag", "qa"):
            raise ValueError(f"builtin={self.builtin!r} with kind={self.kind}: the built-in tasks are not of this "
                             "kind; give data.sources with the task's columns")  # fmt: skip
        if self.builtin == "stdlib-bodies" and self.kind == "classify":
            raise ValueError("builtin='stdlib-bodies' is a generation task: set task.kind=generate (a decoder) "
                             "or seq2seq (an encoder-decoder)")  # fmt: skip


@dataclass
class FinetuneConfig(RunConfig):
    init_from: str = ""
    """A pretraining run directory or checkpoint (any ZeRO stage, any world size), a consolidated
    export (OUT/consolidated), or an HF transformers directory (GPT-2, LLaMA, BERT). The model's
    shape and the tokenizer come from it; the model section of this file is not used."""
    init_random: bool = False
    """Take only the shape and tokenizer from init_from and start from random weights (a baseline)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """What to fine-tune for and on which columns."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(eval_batches=None))
    """As in pretraining, except that each evaluation scores the whole validation set."""

    def validate(self) -> None:
        if not self.init_from:
            raise ConfigError(
                "init_from is required: a pretraining run or checkpoint, an export's consolidated/ folder, "
                "or an HF model directory"
            )
        self.check_run()  # the model's shape is the checkpoint's: with_model checks against it
        if self.task.doc_stride is not None and self.task.doc_stride > self.data.seq_len // 3:
            raise ConfigError(f"task.doc_stride={self.task.doc_stride}: more than a third of data.seq_len="
                              f"{self.data.seq_len}, so windows would barely advance; use task.doc_stride <= "
                              f"{self.data.seq_len // 3}, or null for {self.data.seq_len // 4}")  # fmt: skip

    def check_resume(self, tag_dir) -> None:
        """A ConfigError where checkpoint ``tag_dir``, which this run resumes, holds another
        classification head than this config builds (task.head)."""
        from pretrain import checkpoint as ckpt

        was = ckpt.saved_head(ckpt.saved_task(tag_dir))
        if self.task.kind == "classify" and was != self.task.head:
            raise ConfigError(f"task.head changed {was} -> {self.task.head}: checkpoint {tag_dir} holds the {was} "
                              f"head; resume with task.head={was}, or start a new run")  # fmt: skip

    @property
    def target_len(self) -> int:
        """seq2seq: the decoder's length."""
        return self.task.target_len or self.data.seq_len

    def check_model(self) -> None:
        super().check_model()
        learned = self.model.position == "learned"
        if self.task.kind == "seq2seq" and learned and self.target_len > self.model.max_seq_len:
            raise ConfigError(f"task.target_len={self.target_len}: longer than the model's {self.model.max_seq_len} "
                              f"learned positions (model.max_seq_len); use task.target_len <= {self.model.max_seq_len}")
        if self.task.lora_rank:
            from finetune.lora import check_targets

            check_targets(self.model, self.task.lora_targets)


def load_finetune_config(path, overrides=None) -> FinetuneConfig:
    return load_config(path, overrides, cls=FinetuneConfig)


def saved_finetune_config(tag_dir) -> FinetuneConfig:
    """The fine-tuning config a checkpoint was written with (see pretrain.checkpoint.saved_head)."""
    from pretrain import checkpoint as ckpt

    return load_finetune_config(tag_dir / "config.yaml", [f"task.head={ckpt.saved_head(ckpt.saved_task(tag_dir))}"])


__all__ = ["FinetuneConfig", "TaskConfig", "load_finetune_config", "saved_finetune_config"]
