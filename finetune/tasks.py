"""Fine-tuning tasks: classification (a head on the pooled output) and generation (supervised
fine-tuning with the loss on response tokens only). Each plugs into pretrain.run as a Task."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from finetune.answers import QACollator, QALoss, qa_metrics, qa_rows, stride_for
from finetune.config import FinetuneConfig
from finetune.data import check_labels, check_task_sources, require_labels, task_labels, task_sources, task_tables
from finetune.examples import Examples, cached, is_cached
from finetune.prompts import task_template
from finetune.tagging import TagCollator, TagLoss, are_entity_tags, tag_metrics, tag_rows
from finetune.weights import Pretrained, load_pretrained
from pretrain.data.batches import IGNORE, Batches
from pretrain.data.sources import DataError, column_texts
from pretrain.data.tokenizer import tokenizer_hash
from pretrain.export import load_weights
from pretrain.model import Transformer, build_model, pool
from pretrain.run import LanguageModelTask
from pretrain.trainer import lm_loss, seq2seq_loss


class Classifier(nn.Module):
    """A pretrained body, pooled (first / last real / mean token), then dropout and a linear head;
    ``pooling`` None: the head labels every token (task.kind tag, qa), (B, T, labels). ``pooler``
    (an activation, "tanh" or "gelu") puts a dense layer with it on the pooled token first (BERT's
    and DeBERTa's sequence classifiers); ``bias`` False leaves the head without one (GPT-2's and
    LLaMA's). See classify_head."""

    def __init__(self, body: Transformer, num_labels: int, pooling: str | None, dropout: float,
                 pooler: str | None = None, bias: bool = True):  # fmt: skip
        super().__init__()
        self.cfg = body.cfg
        self.body = body
        if body.cfg.arch == "encoder-decoder":
            body.drop_decoder()  # the pooled encoder output is classified
        self.body.head = nn.Identity()  # the LM head has no part here (and unused weights upset ZeRO)
        self.pooling = pooling
        self.pooler = nn.Linear(body.cfg.d_model, body.cfg.d_model) if pooler else None
        self.pooler_activation = {"tanh": torch.tanh, "gelu": F.gelu, None: None}[pooler]
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(body.cfg.d_model, num_labels, bias=bias)
        self.reset_head()

    @classmethod
    def for_task(cls, body: Transformer, num_labels: int, task) -> Classifier:
        """The head ``task`` (a TaskConfig) asks for: classify pools (task.pooling) under
        task.head's layers; tag and qa label every token."""
        if task.kind != "classify":
            return cls(body, num_labels, None, task.classifier_dropout)
        pooling = task.pooling_for(body.cfg.arch)
        return cls(body, num_labels, pooling, task.classifier_dropout, **classify_head(body.cfg, task))

    def reset_head(self, gather=None) -> None:
        """Normal(0, init_std) weights, zero biases; ``gather`` as in Transformer.reset_parameters."""
        layers = [m for m in (self.pooler, self.classifier) if m is not None]
        params = [p for m in layers for p in m.parameters()]
        with gather(params) if gather else contextlib.nullcontext():
            for m in layers:
                nn.init.normal_(m.weight, 0.0, self.cfg.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        hidden = self.body.hidden_states(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        if self.pooling is not None:
            hidden = pool(hidden, attention_mask, self.pooling)
        if self.pooler is not None:
            hidden = self.pooler_activation(self.pooler(hidden))
        return self.classifier(self.dropout(hidden))


def classify_head(model_cfg, task) -> dict:
    """Classifier's ``pooler`` and ``bias`` for task.head: hf, the head of the model's HF sequence
    classifier (pretrain.model.hf.sequence_head; a model of no HF family gets linear's); linear,
    a linear layer with a bias."""
    from pretrain.model.hf import sequence_head

    hf = sequence_head(model_cfg) if task.head == "hf" else None
    return {"pooler": hf.pooler, "bias": hf.bias} if hf else {"pooler": None, "bias": True}


class ExampleDataset(torch.utils.data.Dataset):
    """Tokenized examples (finetune.examples.Examples) for the resumable Batches: (stream position,
    index) -> the row with its position."""

    def __init__(self, examples: Examples):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, item):
        position, index = item
        return {**self.examples[index], "position": position}


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs])


def padded(samples: list[dict], pad_id: int) -> dict:
    """The inputs of a batch of tokenized examples, padded on the right: ids, attention mask,
    stream positions, and token types where the examples have them."""
    ids = [s["input_ids"] for s in samples]
    batch = {"input_ids": pad(ids, pad_id), "attention_mask": pad([[1] * len(s) for s in ids], 0),
             "position": torch.tensor([s["position"] for s in samples])}  # fmt: skip
    if "token_type_ids" in samples[0]:
        batch["token_type_ids"] = pad([s["token_type_ids"] for s in samples], 0)
    return batch


class ClassifyCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict:
        return {**padded(samples, self.pad_id), "labels": torch.tensor([s["label"] for s in samples])}


class SFTCollator:
    """Tokens and their response spans -> inputs and next-token labels, ignored outside the spans
    (prompts, a conversation's other turns, padding)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict:
        ids = pad([s["input_ids"] for s in samples], self.pad_id)
        scored = torch.zeros_like(ids, dtype=torch.bool)
        for row, s in enumerate(samples):
            for a, b in s["spans"]:
                scored[row, a:b] = True
        labels = ids.masked_fill(~scored, IGNORE)
        real = pad([[1] * len(s["input_ids"]) for s in samples], 0)  # so throughput counts no padding
        return {"input_ids": ids[:, :-1], "labels": labels[:, 1:], "attention_mask": real[:, :-1],
                "position": torch.tensor([s["position"] for s in samples])}  # fmt: skip


def classify_loss(engine, batch: dict):
    kwargs = {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}
    logits = engine(batch["input_ids"], **kwargs)
    labels = batch["labels"]
    loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
    n, scored = logits.shape[-1], labels != IGNORE  # evaluation ignores the examples that fill a last batch
    guess = logits.argmax(-1)[scored]
    confusion = torch.bincount(labels[scored] * n + guess, minlength=n * n).view(n, n)  # rows: truth
    return loss, {"count": int(scored.sum()), "confusion": confusion}


def classification_metrics(sums: dict) -> dict:
    confusion = sums["confusion"].long()
    tp = confusion.diag().double()
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    seen = (tp + fp + fn) > 0
    f1 = (2 * tp / (2 * tp + fp + fn).clamp(min=1))[seen]
    return {
        "val_loss": sums["loss_sum"] / max(sums["count"], 1),
        "val_accuracy": (tp.sum() / confusion.sum().clamp(min=1)).item(),
        "val_macro_f1": f1.mean().item() if len(f1) else 0.0,
        "val_confusion": confusion.tolist(),
    }


def classification_rows(tok, table, t, labels: list[str], seq_len: int, with_types: bool) -> list[dict]:
    """Tokenized examples (text or text pair, cut to seq_len) with their label's index."""
    index = {name: i for i, name in enumerate(labels)}
    pairs = column_texts(table, t.text_pair_column) if t.text_pair_column else None
    enc = tok(column_texts(table, t.text_column), pairs,
              truncation=True, max_length=seq_len, return_token_type_ids=with_types)  # fmt: skip
    labelled = zip(enc["input_ids"], column_texts(table, t.label_column), strict=True)
    return [{"input_ids": ids, "label": index[label],
             **({"token_type_ids": enc["token_type_ids"][i]} if with_types else {})}
            for i, (ids, label) in enumerate(labelled)]  # fmt: skip


def sft_rows(tok, table, t, seq_len: int, what: str, say=print) -> list[dict]:
    """Each example's tokens, cut to seq_len + 1, with the spans the loss is on: prompt + response
    + eos with the response's span, or a conversation (task.messages_column) with its assistant
    turns'. Examples left without a token to learn (a prompt filling the length, a conversation
    without an assistant turn) are left out, and said so; a DataError when that leaves none of
    ``what`` (e.g. "the train data")."""
    if t.messages_column:
        from finetune.chat import chat_rows

        rows, left_out = chat_rows(tok, table, t.messages_column, seq_len, what, t.tools_column)
        every = (f"has no assistant turn within data.seq_len={seq_len} tokens; raise data.seq_len or give "
                 "conversations an assistant turn")  # fmt: skip
        some = f"have no assistant turn within data.seq_len={seq_len} tokens"
    else:
        prompts = tok(column_texts(table, t.prompt_column), add_special_tokens=False)["input_ids"]
        responses = tok(column_texts(table, t.response_column), add_special_tokens=False)["input_ids"]
        rows, eos = [], [tok.eos_token_id]  # read once: each read of a special token's id looks it up (25 us)
        for p, r in zip(prompts, responses, strict=True):
            ids = (p + r + eos)[: seq_len + 1]
            if len(ids) > len(p):
                rows.append({"input_ids": ids, "spans": [(len(p), len(ids))]})
        left_out = len(prompts) - len(rows)
        longest = f"(the longest has {max((len(p) for p in prompts), default=0)})"
        every = (f"has a prompt longer than data.seq_len={seq_len} tokens {longest}, leaving no room for its "
                 "response; raise data.seq_len or shorten the prompts")  # fmt: skip
        some = f"have prompts longer than data.seq_len={seq_len} tokens {longest} and no room for a response"
    if left_out and not rows:
        raise DataError(f"every example of {what} {every}")
    if left_out:
        say(f"warning: {left_out} of {len(rows) + left_out} examples of {what} {some}: left out")
    return rows


def seq2seq_rows(tok, table, t, seq_len: int, target_len: int, what: str) -> list[dict]:
    """Source and target token ids, each ending in end-of-text; sources cut to seq_len. A target
    longer than target_len is refused (DataError): cut, it would never learn to end."""
    eos = [tok.eos_token_id]
    sources = tok(column_texts(table, t.prompt_column), add_special_tokens=False)["input_ids"]
    targets = [r + eos for r in tok(column_texts(table, t.response_column), add_special_tokens=False)["input_ids"]]
    long = [len(r) for r in targets if len(r) > target_len]
    if long:
        raise DataError(f"task.target_len={target_len}: {len(long)} of the {len(targets)} targets in {what} are longer "
                        f"(the longest has {max(long)} tokens with its end-of-text); set task.target_len >= "
                        f"{max(long)} or drop those rows")  # fmt: skip
    return [{"input_ids": (s + eos)[:seq_len], "target": r} for s, r in zip(sources, targets, strict=True)]


class Seq2SeqCollator:
    """Sources and targets, each padded on the right: the decoder reads the target shifted right
    behind the pad token (T5's start) and predicts it; padding is masked and not scored."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict:
        source = pad([s["input_ids"] for s in samples], self.pad_id)
        labels = pad([s["target"] for s in samples], IGNORE)
        shifted = pad([[self.pad_id] + s["target"][:-1] for s in samples], self.pad_id)
        real = pad([[1] * len(s["input_ids"]) for s in samples], 0)
        return {"input_ids": source, "attention_mask": real, "decoder_input_ids": shifted,
                "decoder_attention_mask": pad([[1] * len(s["target"]) for s in samples], 0), "labels": labels,
                "position": torch.tensor([s["position"] for s in samples])}  # fmt: skip


def check_task_fits(task, arch: str, what: str) -> None:
    """A DataError when task.kind (and its options) cannot train a model of ``arch``."""
    if task.kind == "seq2seq" and arch != "encoder-decoder":
        raise DataError(f"task.kind=seq2seq with {what}, an {arch}: task.kind=seq2seq needs an encoder-decoder "
                        "checkpoint (T5-like); use task.kind=generate or classify")  # fmt: skip
    if task.kind == "generate" and arch == "encoder-decoder":
        raise DataError(f"task.kind=generate with {what}, an {arch}: an encoder-decoder fine-tunes with "
                        "task.kind=seq2seq (or classify)")  # fmt: skip
    if task.kind == "generate" and arch != "decoder":
        raise DataError(f"task.kind=generate needs a decoder (causal) checkpoint; {what} is an {arch}; use "
                        "task.kind=classify or a GPT/LLaMA checkpoint")  # fmt: skip
    if task.kind == "seq2seq" and task.freeze_body:
        raise DataError("task.freeze_body=true: not for task.kind=seq2seq (it has no head apart from the body); "
                        "use false, or LoRA (task.lora_rank)")  # fmt: skip
    if arch == "encoder-decoder" and task.layer_lr_decay != 1.0:
        raise DataError(f"task.layer_lr_decay={task.layer_lr_decay}: not for an encoder-decoder (the decay walks one "
                        "stack's layers); use 1.0, or LoRA (task.lora_rank)")  # fmt: skip


class FinetuneTask:
    """Builds data, model and loss for `python -m finetune` (see pretrain.run.run for the loop)."""

    def __init__(self, cfg: FinetuneConfig):
        self.cfg = cfg
        self.pretrained: Pretrained = load_pretrained(cfg.init_from)
        self.tokenizer = self.pretrained.tokenizer
        self.kind = cfg.task.kind
        self.labels: list[str] = []
        self._examples = None  # made by check_data
        arch = self.pretrained.model_cfg.arch
        check_task_fits(cfg.task, arch, f"init_from={cfg.init_from!r} ({self.pretrained.source})")
        if self.kind in ("generate", "seq2seq") and self.pretrained.body_only:
            needs = "an LM head" + (" and the decoder" if self.kind == "seq2seq" else "")
            raise DataError(f"task.kind={self.kind} needs {needs}; {self.pretrained.source} holds the stack without "
                            "them (a classifier's body, or an HF base model): start from the checkpoint it was "
                            "fine-tuned from, or one with its LM head")  # fmt: skip
        if cfg.data.tokenizer.path:
            from pretrain.data.tokenizer import load_tokenizer

            given = load_tokenizer(cfg.data.tokenizer.path)
            if tokenizer_hash(given) != tokenizer_hash(self.tokenizer):
                raise DataError(
                    f"data.tokenizer.path={cfg.data.tokenizer.path!r} is not the tokenizer the model was trained "
                    f"with ({self.pretrained.source}); drop data.tokenizer.path to use the checkpoint's"
                )
        if cfg.task.messages_column:  # set on the tokenizer, so every checkpoint carries it
            from finetune.chat import chat_template

            self.tokenizer.chat_template = chat_template(self.tokenizer, cfg.task.chat_template)
        template = task_template(cfg.task)
        if template is not None:  # the prompts' template, as a chat template: carried by every checkpoint and export
            self.tokenizer.chat_template = template.chat_template()
        if self.tokenizer.pad_token_id is None:
            raise DataError(f"the tokenizer of {self.pretrained.source} has no pad token, which batching needs")
        # The shape is the checkpoint's (run checks the config against it); the kernel one that takes
        # the padding of fine-tuning batches.
        self.model_cfg = self.pretrained.model_cfg.for_padding(cfg.task.attention)
        self.loss_fn = {"classify": classify_loss, "generate": lm_loss, "seq2seq": seq2seq_loss}.get(self.kind)
        self.eval_metrics = classification_metrics if self.kind == "classify" else LanguageModelTask.eval_metrics
        self.select_metric = ("val_accuracy", max) if self.kind == "classify" else ("val_loss", min)
        # tag: loss, metrics and the metric to select by follow the tags the data has (prepare)
        if self.kind == "qa":
            self.loss_fn, self.eval_metrics, self.select_metric = QALoss([]), qa_metrics, ("val_span_f1", max)
            self.labels = ["start", "end"]  # the head's two outputs per token

    # -- data

    def check_data(self) -> None:
        """Every example read, checked and made into rows, before any process group exists: a bad
        file, a label training lacks, a target over task.target_len or an answer no window holds is
        one line from here, and the launcher's preflight runs this same check before it starts a
        process. The examples are cached under data.cache_dir (finetune.examples): the preflight,
        else rank 0, makes them; a rank that finds them cached reads them, and where they are not
        (no preflight, or hub data) the other ranks check their files here and read the examples in
        ``prepare``, once rank 0 has made them. What the making said is said again by ``prepare``,
        in the run's log."""
        with_types = self.pretrained.model_cfg.type_vocab_size > 0
        sources = task_sources(self.cfg)
        if int(os.environ.get("RANK", "0")) > 0 and not is_cached(self.cfg, self.tokenizer, sources, with_types):
            check_task_sources(self.cfg)
            return
        self._make_or_read()

    def _make_or_read(self) -> None:
        def make():
            said = []
            rows = self._rows(said.append, check_task_sources(self.cfg))
            return rows, self.labels, said

        status = []
        write = int(os.environ.get("LOCAL_RANK", "0")) == 0  # a node's ranks, making them at once: one writes
        with_types = self.pretrained.model_cfg.type_vocab_size > 0
        self._examples, made = cached(self.cfg, self.tokenizer, task_sources(self.cfg), with_types, make,
                                      status.append, write)  # fmt: skip
        self.labels, self.examples_status = made["labels"], status[-1]
        self._said = [*made["said"], *status]
        self._derive(self._examples)

    def _rows(self, say, read: dict) -> dict:
        """{"train": rows, "validation": rows (absent without validation data)}; ``read``: the
        tables check_task_sources read."""
        tables = task_tables(self.cfg, say, read)
        if tables["validation"] is None:
            say("warning: no validation data (data.validation_fraction=0 and no source gives validation_files or "
                "validation_split): evaluation is off")  # fmt: skip
            tables = {"train": tables["train"]}
        if len(tables["train"]) == 0 or len(tables.get("validation", [None])) == 0:
            n_train, n_val = len(tables["train"]), len(tables.get("validation", []))
            raise DataError(f"the task has {n_train} training and {n_val} validation examples; both need at "
                            "least one (add data, or give validation_files)")  # fmt: skip
        if self.kind == "classify":
            return self._classification_rows(tables)
        if self.kind == "tag":
            return self._tag_rows(tables)
        if self.kind == "qa":
            return self._qa_rows(tables, say)
        if self.kind == "seq2seq":
            return {split: seq2seq_rows(self.tokenizer, table, self.cfg.task, self.cfg.data.seq_len,
                                        self.cfg.target_len, f"the {split} data")
                    for split, table in tables.items()}  # fmt: skip
        return self._sft_rows(tables, say)

    def _derive(self, examples: dict) -> None:
        """What follows from the labels and examples: tagging's loss, metrics and the metric to select
        by (the tags the data has), question answering's loss (an example by its best window)."""
        if self.kind == "tag":
            self.loss_fn, self.eval_metrics = TagLoss(self.labels), tag_metrics
            self.select_metric = ("val_entity_f1", max) if are_entity_tags(self.labels) else ("val_accuracy", max)
        if self.kind == "qa":
            held = examples["validation"].column("example").tolist() if "validation" in examples else []
            self.loss_fn = QALoss(held)

    def collator(self):
        pad_id = self.tokenizer.pad_token_id
        return {"classify": ClassifyCollator, "tag": TagCollator, "qa": QACollator, "seq2seq": Seq2SeqCollator,
                "generate": SFTCollator}[self.kind](pad_id)  # fmt: skip

    def prepare(self, rank: int, world: int, run_dir: Path, say) -> None:
        if self._examples is None:  # rank 0 made them before this rank's turn (pretrain.run's _prepare_data)
            self._make_or_read()
        for line in self._said:
            say(line)
        examples, collate = self._examples, self.collator()
        micro, seed = self.cfg.train.micro_batch_size, self.cfg.train.seed
        self.train_batches = Batches(ExampleDataset(examples["train"]), collate, micro, rank, world, seed,
                                     shuffle=True, num_workers=self.cfg.data.num_workers)  # fmt: skip
        val = examples.get("validation")
        self.val_batches = Batches(ExampleDataset(val), collate, micro, rank, world, seed,
                                   shuffle=False, num_workers=0) if val is not None else None  # fmt: skip
        trained, runs = self.pretrained.model_cfg.attention, self.model_cfg.attention
        if trained != runs:
            why = f"the checkpoint's {trained} takes no padding mask" if self.cfg.task.attention == "auto" else (
                f"task.attention; the checkpoint's is {trained}")  # fmt: skip
            say(f"attention: {runs} ({why}; the weights are the same)")
        n_train, n_val = examples["train"].count(), val.count() if val is not None else 0
        windows = len(examples["train"]) + (len(val) if val is not None else 0)
        say(
            f"task {self.kind}: {n_train} training and {n_val} validation examples"
            + (f", {len(self.labels)} labels" if self.kind in ("classify", "tag") else "")
            + (f" ({windows} windows of data.seq_len={self.cfg.data.seq_len} tokens, sharing "
               f"{stride_for(self.cfg.task, self.cfg.data.seq_len)})" if windows > n_train + n_val else "")
            + f"; weights from {self.pretrained.source}" + (" (its pooler too)" if self.pooler_from_folder else "")
        )  # fmt: skip

    def _classification_rows(self, tables) -> dict:
        t = self.cfg.task
        self.labels = sorted(set(column_texts(tables["train"], t.label_column)))
        require_labels(self.labels, t.label_column)
        if "validation" in tables:
            check_labels(tables["validation"], t.label_column, self.labels, self._validation_named())
        with_types = self.pretrained.model_cfg.type_vocab_size > 0
        return {split: classification_rows(self.tokenizer, table, t, self.labels, self.cfg.data.seq_len, with_types)
                for split, table in tables.items()}  # fmt: skip

    def _tag_rows(self, tables) -> dict:
        t = self.cfg.task
        self.labels = sorted(task_labels(tables["train"], t))
        require_labels(self.labels, t.tags_column, "tags_column")
        if "validation" in tables:
            check_labels(tables["validation"], t.tags_column, self.labels, self._validation_named(), tags=True)
        with_types = self.pretrained.model_cfg.type_vocab_size > 0
        return {split: tag_rows(self.tokenizer, table, t, self.labels, self.cfg.data.seq_len, with_types)
                for split, table in tables.items()}  # fmt: skip

    def _qa_rows(self, tables, say) -> dict:
        with_types, rows = self.pretrained.model_cfg.type_vocab_size > 0, {}
        for split, table in tables.items():
            rows[split], left_out = qa_rows(self.tokenizer, table, self.cfg.task, self.cfg.data.seq_len, with_types,
                                            training=split == "train")  # fmt: skip
            if left_out and not rows[split]:
                raise DataError(f"every answer of the {split} data is longer than the context a window of "
                                f"data.seq_len={self.cfg.data.seq_len} tokens holds beside its question; raise "
                                "data.seq_len")  # fmt: skip
            if left_out:
                say(f"warning: {left_out} of {len(table)} examples of the {split} data have an answer longer than the "
                    f"context a window of data.seq_len={self.cfg.data.seq_len} tokens holds beside its question: left "
                    "out")  # fmt: skip
        return rows

    def _validation_named(self) -> str:
        """The validation data, said with where it comes from when a share of training was held out."""
        if all(src.names("validation") for src in task_sources(self.cfg)):
            return "the validation data"
        share = self.cfg.data.validation_fraction
        return f"the validation data (held out of training: data.validation_fraction={share})"

    def _sft_rows(self, tables, say) -> dict:
        return {split: sft_rows(self.tokenizer, table, self.cfg.task, self.cfg.data.seq_len, f"the {split} data", say)
                for split, table in tables.items()}  # fmt: skip

    # -- model

    def build_model(self, gather=None) -> nn.Module:
        """The pretrained body (or a fresh one for init_random) and the task's head. ``gather``
        (ZeRO-3): the model is being built partitioned; weights stream in one tensor at a time."""
        body = build_model(self.model_cfg, gather)
        if not self.cfg.init_random:
            load_weights(body, self.pretrained.tensors(), gather, skip=self.pretrained.skip)
        model = body
        if self.kind in ("classify", "tag", "qa"):
            model = Classifier.for_task(body, len(self.labels), self.cfg.task)
            if gather is not None:
                model.reset_head(gather)
            if self.pooler_from_folder:
                pooler = {f"pooler.{k}": v for k, v in self.pretrained.pooler.items()}
                load_weights(model, pooler, gather, skip=("body.", "classifier."))
        if self.cfg.task.freeze_body:
            for p in body.parameters():
                p.requires_grad_(False)
        if self.cfg.task.lora_rank:  # last: its random draws leave the head's as without LoRA
            from finetune.lora import add_adapters

            add_adapters(body, self.cfg.task, gather, seed=self.cfg.train.seed)
        return model

    def lr_scale(self, name: str) -> float:
        """Layer-wise learning-rate multiplier of a parameter (1.0 for heads)."""
        decay, layers = self.cfg.task.layer_lr_decay, self.pretrained.model_cfg.num_layers
        if decay == 1.0:
            return 1.0
        name = name.removeprefix("body.")
        if name.startswith("layers."):
            return decay ** (layers - int(name.split(".")[1]))
        if name.startswith(("embed.", "position.")):
            return decay ** (layers + 1)
        return 1.0

    @property
    def pooler_from_folder(self) -> bool:
        """A sequence classifier with a pooler starts it from the HF folder's where there is one."""
        return (self.kind == "classify" and not self.cfg.init_random and self.pretrained.pooler is not None
                and classify_head(self.pretrained.model_cfg, self.cfg.task)["pooler"] is not None)  # fmt: skip

    def check_resume(self, resume: Path) -> None:
        self.cfg.check_resume(resume)

    def extra_files(self) -> dict[str, str]:
        """Saved next to every checkpoint (and in the run directory)."""
        return {"labels.json": json.dumps(self.labels)} if self.kind in ("classify", "tag", "qa") else {}
