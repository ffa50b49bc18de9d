"""python -m finetune.generate CHECKPOINT (--prompt TEXT ... | --prompts-file FILE) [options]

Batched sampling from a decoder or encoder-decoder checkpoint (a fine-tuning or pretraining run, a
checkpoint, an export's consolidated/ folder or an HF directory): greedy or temperature / top-k /
top-p, a repetition penalty, stop strings, with the KV cache. A decoder's prompts are padded on the
left so every row's next token sits at the same position; an encoder-decoder's encoder reads the
prompt once and its decoder writes the output. A conversation (a JSON line's "messages", or a
--prompt under --chat) is written with the checkpoint's chat template, asking for the assistant's
next turn. A checkpoint fine-tuned with task.prompt_template writes prompts with it: a text prompt
fills its first column (--raw: sent as given), a JSON line of columns fills them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Chat:
    """A conversation to continue with the assistant's next turn, and the tools it may call."""

    messages: list[dict]
    tools: list[dict] | None = None

    def shown(self) -> dict:
        """What the output line repeats of it."""
        return {"messages": self.messages, **({"tools": self.tools} if self.tools else {})}


@dataclass
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 1.0
    """0 (or --greedy) picks the most likely token."""
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        from pretrain.config import ConfigError

        checks = [("max-new-tokens", self.max_new_tokens, self.max_new_tokens >= 1, "an integer >= 1"),
                  ("temperature", self.temperature, math.isfinite(self.temperature) and self.temperature >= 0, ">= 0"),
                  ("top-k", self.top_k, self.top_k >= 0, ">= 0 (0: off)"),
                  ("top-p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),
                  ("repetition-penalty", self.repetition_penalty,
                   math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0, "> 0 (1: off)")]  # fmt: skip
        for name, value, ok, valid in checks:
            if not ok:
                raise ConfigError(f"--{name} {value}: must be {valid}")


def _adjust(logits: torch.Tensor, seen: torch.Tensor, s: Sampling) -> torch.Tensor:
    """(B, V) next-token logits -> sampling distribution logits."""
    if s.repetition_penalty != 1.0:  # CTRL's penalty on tokens already in the row
        picked = logits.gather(1, seen)
        picked = torch.where(picked > 0, picked / s.repetition_penalty, picked * s.repetition_penalty)
        logits = logits.scatter(1, seen, picked)
    if s.temperature > 0:
        logits = logits / s.temperature
    if s.top_k > 0:
        kth = logits.topk(min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > s.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], s: Sampling, use_cache: bool = True) -> list[str]:
    """Continuations of each prompt (without the prompt); for an encoder-decoder, the decoder's
    output for each prompt as the encoder's input."""
    steps = _steps(model, tokenizer, prompts, s.max_new_tokens, use_cache)
    device = next(model.parameters()).device
    rng = torch.Generator(device=device).manual_seed(s.seed)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new_tokens: list[torch.Tensor] = []
    for _ in range(s.max_new_tokens):
        logits = _adjust(steps.logits().float(), steps.seen(), s)
        if s.temperature > 0:
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=rng).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        if tokenizer.eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, tokenizer.eos_token_id), nxt)
            done |= nxt == tokenizer.eos_token_id
        new_tokens.append(nxt)
        steps.extend(nxt)
        texts = tokenizer.batch_decode(torch.stack(new_tokens, 1), skip_special_tokens=True)
        if done.all() or (s.stop and all(any(x in t for x in s.stop) for t in texts)):
            break
    texts = tokenizer.batch_decode(torch.stack(new_tokens, 1), skip_special_tokens=True)
    return [_cut(t, s.stop) for t in texts]


@torch.no_grad()
def beam_search(model, tokenizer, prompts: list[str], num_beams: int, max_new_tokens: int,
                length_penalty: float = 1.0, use_cache: bool = True) -> list[list[int]]:  # fmt: skip
    """The best continuation (token ids) of each prompt under beam search: each step keeps the
    ``num_beams`` highest sums of log-probabilities; a beam that ends in end-of-text is set aside
    with its sum over length ** length_penalty, and a prompt is done once ``num_beams`` are (early
    stopping); the caches follow their beams. One beam is greedy decoding."""
    K, B = num_beams, len(prompts)
    steps = _steps(model, tokenizer, [p for p in prompts for _ in range(K)], max_new_tokens, use_cache)
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # the beams start as one: only the first expands
    tokens = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(B)]
    for _ in range(max_new_tokens):
        logp = steps.logits().float().log_softmax(-1)
        vocab = logp.shape[-1]
        top, index = (scores[:, :, None] + logp.view(B, K, vocab)).view(B, K * vocab).topk(2 * K, dim=1)
        rows, picked, kept = [], [], []
        for b in range(B):
            chosen = 0
            for j in range(2 * K):
                row, token = b * K + int(index[b, j]) // vocab, int(index[b, j]) % vocab
                if token == eos:
                    if j < K and len(finished[b]) < K:  # among the best K: a finished hypothesis
                        finished[b].append((float(top[b, j]) / (tokens.shape[1] + 1) ** length_penalty, tokens[row]))
                    continue
                if chosen < K:
                    rows.append(row)
                    picked.append(token)
                    kept.append(top[b, j])
                    chosen += 1
        rows_t = torch.tensor(rows, device=device)
        picked_t = torch.tensor(picked, device=device)
        tokens = torch.cat([tokens[rows_t], picked_t[:, None]], dim=1)
        scores = torch.stack(kept).view(B, K)
        steps.reorder(rows_t)
        steps.extend(picked_t)
        if all(len(f) >= K for f in finished):
            break
    best = []
    for b in range(B):
        running = [(float(scores[b, k]) / tokens.shape[1] ** length_penalty, tokens[b * K + k]) for k in range(K)]
        pool = finished[b] if len(finished[b]) >= K else finished[b] + running
        best.append(max(pool, key=lambda x: x[0])[1].tolist())
    return best


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _steps(model, tokenizer, prompts: list[str], max_new_tokens: int, use_cache: bool):
    model.eval()
    if model.cfg.arch == "encoder-decoder":
        return _Seq2SeqSteps(model, tokenizer, prompts, max_new_tokens, use_cache)
    return _DecoderSteps(model, tokenizer, prompts, max_new_tokens, use_cache)


class _DecoderSteps:
    """A decoder's side of decoding: prompts padded on the left so every row's next token sits at
    the same position; the cache (or, without it, the whole sequence) advances a token a step."""

    def __init__(self, model, tokenizer, prompts: list[str], max_new_tokens: int, use_cache: bool):
        from pretrain.data.tokenizer import separator_id

        device = next(model.parameters()).device
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        # an empty prompt starts a document, as one does after end-of-text in packed pretraining
        encoded = [e or [separator_id(tokenizer, "decoder")] for e in encoded]
        width = max(len(e) for e in encoded)
        pad_id = _pad_id(tokenizer)
        self.ids = torch.tensor([[pad_id] * (width - len(e)) + e for e in encoded], device=device)
        self.mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        total = width + max_new_tokens
        _fits(model, width, max_new_tokens, total)
        self.model, self.step = model, self.ids
        self.cache = model.new_cache(len(prompts), total) if use_cache else None

    def logits(self) -> torch.Tensor:
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0 after left padding
        if self.cache is None:
            return self.model(self.ids, attention_mask=self.mask, position_ids=positions)[:, -1]
        step = self.step
        return self.model(step, attention_mask=self.mask, cache=self.cache,
                          position_ids=positions[:, -step.shape[1] :])[:, -1]  # fmt: skip

    def seen(self) -> torch.Tensor:
        return self.ids

    def extend(self, nxt: torch.Tensor) -> None:
        self.ids = torch.cat([self.ids, nxt[:, None]], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(nxt)[:, None]], dim=1)
        self.step = nxt[:, None]

    def reorder(self, rows: torch.Tensor) -> None:
        self.ids, self.mask = self.ids[rows], self.mask[rows]
        if self.cache is not None:
            self.cache.reorder(rows)


class _Seq2SeqSteps:
    """An encoder-decoder's side: the encoder reads each prompt (right-padded, ending in end-of-text
    as in pretraining) once; the decoder starts from the pad token, as T5 does, with its self- and
    cross-attention cached."""

    def __init__(self, model, tokenizer, prompts: list[str], max_new_tokens: int, use_cache: bool):
        device = next(model.parameters()).device
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] + eos for p in prompts]
        width = max(len(e) for e in encoded)
        _fits(model, width, 0, width, "the encoder's")
        _fits(model, 0, max_new_tokens, max_new_tokens + 1, "the decoder's")  # it starts from one pad token
        pad_id = _pad_id(tokenizer)
        self.src = torch.tensor([e + [pad_id] * (width - len(e)) for e in encoded], device=device)
        self.src_mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded], device=device)
        self.model, self.memory = model, model.encode(self.src, self.src_mask)
        self.cache = model.new_cache(len(prompts), max_new_tokens + 1) if use_cache else None
        self.out = torch.full((len(prompts), 1), pad_id, device=device)

    def logits(self) -> torch.Tensor:
        if self.cache is None:
            return self.model(self.src, self.out, self.src_mask)[:, -1]
        return self.model.head(self.model.decode(self.out[:, -1:], self.memory, self.src_mask, cache=self.cache))[:, -1]

    def seen(self) -> torch.Tensor:
        return self.out

    def extend(self, nxt: torch.Tensor) -> None:
        self.out = torch.cat([self.out, nxt[:, None]], dim=1)

    def reorder(self, rows: torch.Tensor) -> None:
        self.src, self.src_mask, self.out = self.src[rows], self.src_mask[rows], self.out[rows]
        self.memory = self.memory[rows]
        if self.cache is not None:
            self.cache.reorder(rows)


def _fits(model, prompt: int, new: int, total: int, whose: str = "the model's") -> None:
    """A ConfigError when a learned-position model would need positions it does not have (rotary,
    ALiBi and relative positions reach past their training length)."""
    from pretrain.config import ConfigError

    limit = model.cfg.max_seq_len
    if model.cfg.position == "learned" and total > limit:
        what = f"the longest prompt ({prompt} tokens)" if prompt else f"max_new_tokens={new}"
        what += f" + max_new_tokens={new}" if prompt and new else ""
        raise ConfigError(f"{what} needs {total} positions but {whose} learned positions are {limit}; shorten the "
                          "prompt or ask for fewer new tokens (--max-new-tokens)")  # fmt: skip


def _cut(text: str, stops: tuple[str, ...]) -> str:
    ends = [text.index(x) for x in stops if x in text]
    return text[: min(ends)] if ends else text


def load_decoder(path: str):
    """(model, tokenizer) from anything init_from accepts; refuses encoders (they predict no next token)."""
    model, tok, _, _ = load_generator(path)
    return model, tok


def load_generator(path: str):
    """(model, tokenizer, prompt template or None, prompt column or None) from anything init_from
    accepts: the template a fine-tuning run wrote its prompts with (task.prompt_template), and the
    column its data held the prompts in (task.prompt_column; a record of prompts may use it)."""
    from finetune.prompts import PromptTemplate
    from finetune.weights import load_pretrained
    from pretrain.config import ConfigError
    from pretrain.export import load_model

    pre = load_pretrained(path, best=True)
    print(f"weights: {pre.source}", file=sys.stderr)
    if pre.model_cfg.arch == "encoder":
        raise ConfigError(f"{path}: generation needs a decoder or encoder-decoder checkpoint; this is an encoder")
    cfg = pre.model_cfg.for_padding()  # batched prompts are padded
    if cfg.attention != pre.model_cfg.attention:
        print(f"attention: {cfg.attention} (the checkpoint's {pre.model_cfg.attention} takes no padding mask; the "
              "weights are the same)", file=sys.stderr)  # fmt: skip
    template = PromptTemplate(pre.prompt_template) if pre.prompt_template is not None else None
    return load_model(pre.state_dict(), cfg).eval(), pre.tokenizer, template, pre.prompt_column


def read_prompts(path: str) -> list:
    """A prompts file's prompts: lines of text (\\n for a line break), or JSON lines with a "prompt"
    (text) or "messages" (a conversation: a list of turns, ShareGPT's "conversations" too, and the
    "tools" it may call), or else the columns of the checkpoint's prompt template or its prompt
    column (a dict, written with it later). A table (.csv, .tsv, .parquet) gives a record a row:
    its lines are not prompts (a header, a target beside the source)."""
    from pretrain.config import ConfigError
    from pretrain.data.sources import BUILDERS, kind_suffix

    if not Path(path).is_file():
        raise ConfigError(f"--prompts-file {path}: {'a folder, not a file' if Path(path).is_dir() else 'no such file'}")
    if BUILDERS.get(kind_suffix(path)) in ("csv", "parquet", "arrow"):
        from types import SimpleNamespace

        from finetune.data import file_table

        flags = SimpleNamespace(no_header=False, column_names=None, quoting="minimal", delimiter=None, field=None,
                                kind=None)  # fmt: skip
        table = file_table(path, flags, where="--prompts-file")
        records = [{k: v for k, v in row.items() if v is not None} for row in table.to_list()]
        return [_prompt_of(r, f"--prompts-file {path} row {i}") for i, r in enumerate(records, 1)]
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--prompts-file {path} is not UTF-8 text (byte {e.start}); convert it, e.g. iconv -f "
                          "latin1 -t utf-8") from None  # fmt: skip
    except OSError as e:  # a folder, a file this user may not read
        raise ConfigError(f"--prompts-file {path}: cannot be read ({e.strerror})") from None
    prompts = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")  # \r\n (a Windows editor's) ends a line as \n does
        if not line.strip():
            continue  # a blank line is no prompt (an empty one is --prompt "")
        if not line.startswith("{"):
            prompts.append(line.replace("\\n", "\n"))
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"--prompts-file {path} line {number}: {e}") from None
        prompts.append(_prompt_of(record, f"--prompts-file {path} line {number}"))
    if not prompts:
        raise ConfigError(f"--prompts-file {path} holds no prompts (it is empty, or its lines are blank); write a "
                          "prompt a line")  # fmt: skip
    return prompts


def _prompt_of(record: dict, where: str):
    """A record of a prompts file: a conversation (``messages``, ShareGPT's ``conversations``, with
    the ``tools`` it may call) as a Chat, else the record itself (see templated)."""
    from finetune.chat import tool_list, turns
    from pretrain.config import ConfigError

    chat = next((record[k] for k in ("messages", "conversations") if k in record), None)
    if chat is None:
        return record
    try:
        return Chat(turns(chat), tool_list(record.get("tools")))
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def templated(template, prompt, raw: bool, checkpoint: str, where: str, column: str | None = None) -> str:
    """A text prompt or a record (a prompts file's JSON line or table row of columns) as the model
    reads it: written with the checkpoint's prompt template (a text fills its first column) unless
    ``raw``. A record without the template's columns gives its "prompt", else its ``column`` (the
    checkpoint's task.prompt_column)."""
    from pretrain.config import ConfigError

    if isinstance(prompt, dict) and not (template is not None and set(prompt) & set(template.columns)):
        key = next((k for k in ("prompt", column) if k is not None and k in prompt), None)
        if key is None:
            reads = (f"{checkpoint}'s prompt template reads {template.columns}" if template else
                     f"{checkpoint} has no prompt template")  # fmt: skip
            named = f" or its prompt column {column!r}" if column not in (None, "prompt") else ""
            raise ConfigError(f"{where}: a record needs a 'prompt'{named} or 'messages' (or the columns of the "
                              f"checkpoint's prompt template); this one has {sorted(prompt)}, and {reads}")  # fmt: skip
        prompt = str(prompt[key])
    if isinstance(prompt, str):
        return prompt if raw or template is None else template.write({template.columns[0]: prompt})
    return template.write(prompt)


def _shown(prompt) -> dict:
    """What an output line repeats of its prompt: the text, the conversation, or a record's columns."""
    if isinstance(prompt, Chat):
        return prompt.shown()
    return prompt if isinstance(prompt, dict) else {"prompt": prompt}


def conversation_prompt(tok, chat: Chat, checkpoint: str) -> str:
    """A conversation written, with the checkpoint's chat template, as the prompt for the
    assistant's next turn."""
    from finetune.chat import prompt_text
    from pretrain.config import ConfigError

    if not tok.chat_template:
        raise ConfigError(f"{checkpoint}: its tokenizer has no chat template (it was not fine-tuned on conversations: "
                          "task.messages_column); give prompts as text")  # fmt: skip
    return prompt_text(tok, chat.messages, checkpoint, chat.tools)


def main(argv: list[str] | None = None) -> None:
    from pretrain.config import ConfigError, exit_on_config_error

    ap = argparse.ArgumentParser(description="Sample from a decoder or encoder-decoder checkpoint.")
    ap.add_argument("checkpoint")
    ap.add_argument("--prompt", action="append", default=[])
    ap.add_argument("--prompts-file", help="one prompt per line, or JSON lines with a 'prompt' field or a 'messages' "
                    "conversation (its next assistant turn is written), or a table (.csv, .tsv, .parquet) with a "
                    "prompt column (the run's task.prompt_column, or 'prompt')")  # fmt: skip
    ap.add_argument("--chat", action="store_true", help="each --prompt is a user's turn, written with the checkpoint's "
                    "chat template (a model fine-tuned on conversations)")  # fmt: skip
    ap.add_argument("--raw", action="store_true", help="text prompts go to the model as given, not written with the "
                    "checkpoint's prompt template (task.prompt_template)")  # fmt: skip
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--stop", action="append", default=[])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (1: sample or greedy)")
    ap.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length ** this")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)

    @exit_on_config_error
    def run() -> None:
        from pretrain.files import results_stdout

        results = results_stdout()  # JSON lines alone: what loading prints goes to stderr
        prompts = [Chat([{"role": "user", "content": p}]) if args.chat else p for p in args.prompt]
        if args.prompts_file:
            prompts += read_prompts(args.prompts_file)
        if not prompts:
            ap.error("give --prompt TEXT or --prompts-file FILE")
        s = Sampling(args.max_new_tokens, 0.0 if args.greedy else args.temperature, args.top_k, args.top_p,
                     args.repetition_penalty, tuple(args.stop), args.seed)  # fmt: skip
        if args.num_beams < 1:
            raise ConfigError(f"--num-beams {args.num_beams}: must be an integer >= 1")
        if not math.isfinite(args.length_penalty):
            raise ConfigError(f"--length-penalty {args.length_penalty}: must be a finite number (1: the mean "
                              "log-probability per token; 0: the plain sum)")  # fmt: skip
        model, tok, template, column = load_generator(args.checkpoint)
        if template is not None and not args.raw:
            print(f"prompts: written with the checkpoint's prompt template (columns {template.columns}; a text "
                  f"prompt is its {template.columns[0]}); --raw sends text as given", file=sys.stderr)  # fmt: skip
        texts = [conversation_prompt(tok, p, args.checkpoint) if isinstance(p, Chat)
                 else templated(template, p, args.raw, args.checkpoint,
                                f"--prompts-file {args.prompts_file} line {i - len(args.prompt) + 1}", column)
                 for i, p in enumerate(prompts)]  # fmt: skip
        if args.num_beams > 1:
            best = beam_search(model, tok, texts, args.num_beams, s.max_new_tokens, args.length_penalty)
            texts = [_cut(t, s.stop) for t in tok.batch_decode(best, skip_special_tokens=True)]
        else:
            texts = generate(model, tok, texts, s)
        for prompt, text in zip(prompts, texts, strict=True):
            print(json.dumps({**_shown(prompt), "completion": text}), file=results)

    run()


if __name__ == "__main__":
    main()
