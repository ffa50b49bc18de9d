"""The training loop over a DeepSpeed engine: steps, non-finite guard, evaluation, checkpoints."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from pretrain.config import TrainConfig
from pretrain.data.batches import IGNORE
from pretrain.model import redrawing_layers


class NonFiniteLossError(RuntimeError):
    pass


def lm_loss(engine, batch: dict) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over the labelled positions (next tokens, or masked tokens for MLM),
    fused with the output layer so the (tokens, vocab) logits never exist at once."""
    kwargs = {"document_ids": batch["document_ids"]} if "document_ids" in batch else {}
    loss, correct, count = engine(batch["input_ids"], labels=batch["labels"], **kwargs)
    return loss, {"correct": correct, "count": count}


def seq2seq_loss(engine, batch: dict) -> tuple[torch.Tensor, dict]:
    """An encoder-decoder's mean cross-entropy over the decoder's labelled targets (the corrupted
    spans in pretraining, a task's targets in fine-tuning)."""
    loss, correct, count = engine(batch["input_ids"], batch["decoder_input_ids"], batch.get("attention_mask"),
                                  batch.get("decoder_attention_mask"), labels=batch["labels"])  # fmt: skip
    return loss, {"correct": correct, "count": count}


def accumulate(sums: dict, loss: torch.Tensor, extra: dict) -> None:
    """Add one batch's loss (times its count) and the loss function's other sums into ``sums``."""
    count = torch.as_tensor(extra["count"], dtype=torch.float64)
    loss_sum = torch.where(count > 0, loss.detach().double() * count, 0.0)  # nothing scored: the mean is nan
    for key, value in {"loss_sum": loss_sum, **extra}.items():
        value = torch.as_tensor(value, dtype=torch.float64)
        sums[key] = sums[key] + value if key in sums else value


STOP_CHECK_EVERY = 16
"""Evaluation batches between two questions to the ranks whether one was asked to stop."""


def _reduce_device(t: torch.Tensor) -> torch.device:
    """Where ``t`` is summed over the ranks: NCCL reduces GPU tensors only, so a count made on the
    host (a Python number, a CPU tensor) goes to this rank's GPU; gloo reduces where it is."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device


def summed(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks, on its own device."""
    moved = t.to(_reduce_device(t))
    dist.all_reduce(moved)
    return moved.to(t.device)


class StopPoll:
    """Every STOP_CHECK_EVERY evaluation batches, whether any rank was asked to stop, without the
    ranks waiting for each other: the question is an asynchronous all-reduce posted at one point
    and read at the next, so a rank some batches ahead does not stall for the others (asked every
    batch and answered at once, it made a small model's evaluation 1.65x as long on 2 CPU
    processes; docs/benchmarks.md). Every rank reads the same answer at the same batch, so all
    leave the evaluation together."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.pending = None

    def __call__(self, batch: int) -> bool:
        t = self.trainer
        if t.world == 1:
            asked = bool(t.stop_requested)
        elif batch % STOP_CHECK_EVERY:
            return False
        else:
            asked = self.finish()
            if not asked:
                flag = torch.tensor([float(bool(t.stop_requested))], dtype=torch.float64)
                flag = flag.to(_reduce_device(flag))
                self.pending = dist.all_reduce(flag, async_op=True), flag
        if asked and not t.stopping:
            t.stopping = t.stop_requested or "a stop request to another rank"
        return asked

    def finish(self) -> bool:
        """The answer to the question in flight (False if none): wait for it."""
        if self.pending is None:
            return False
        work, flag = self.pending
        self.pending = None
        work.wait()
        return flag.item() > 0


class Trainer:
    """Runs optimizer steps until train.max_steps. Everything it counts is in ``state_dict``."""

    def __init__(self, cfg: TrainConfig, engine, train_batches, val_batches, monitor, checkpoint: Callable,
                 grad_accum: int, eval_every: int, log_every: int,
                 loss_fn: Callable | None = None, eval_metrics: Callable | None = None,
                 select_metric: tuple[str, Callable] | None = None, heartbeat: Callable | None = None,
                 inspect_every: int = 0):  # fmt: skip
        self.cfg, self.engine, self.monitor, self.checkpoint = cfg, engine, monitor, checkpoint
        """checkpoint(trainer, last, best=False) -> whether it saved (the saver decides if the step is due)."""
        self.train_batches, self.val_batches = train_batches, val_batches
        self.grad_accum = grad_accum
        self.eval_every, self.log_every = eval_every, log_every
        self.loss_fn = loss_fn or lm_loss
        self.eval_metrics = eval_metrics
        self.select_metric = select_metric
        """(metric, max or min): evaluations that improve it save a checkpoint kept as `best`."""
        self.best: dict = {}
        self.heartbeat = heartbeat
        """Called with the step after each one (at most every few seconds): the rank's sign of life."""
        self._last_beat = 0.0
        self.inspect_every = inspect_every
        """Every N evaluations, per-head attention summaries go to the monitor (0: never)."""
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.redrawing = redrawing_layers(getattr(engine, "module", engine))
        """Performer layers that take new random features as steps pass (found once)."""
        self.step = 0
        self.tokens = 0
        self.predicted = 0
        self.skipped = 0
        self.nonfinite_in_row = 0
        self.last_eval: dict = {}
        self.watched: float | None = None
        """Best value so far of the metric early stopping watches."""
        self.stale_evals = 0
        """Evaluations in a row that did not improve ``watched``."""
        self.stopped_early = ""
        self.stopping = ""
        """Why every rank is stopping after this step (any rank's request, agreed in the all-reduce)."""
        self.stop_requested = ""
        """Why this rank was asked to stop (a signal handler sets it; see request_stop)."""
        self.stopped = ""
        """Set when the run stopped on request: at which step, and why."""

    def state_dict(self) -> dict:
        return {"step": self.step, "tokens": self.tokens, "predicted": self.predicted, "skipped": self.skipped,
                "best": self.best, "watched": self.watched, "stale_evals": self.stale_evals,
                "nonfinite_in_row": self.nonfinite_in_row, "last_eval": self.last_eval}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.step, self.tokens, self.skipped = state["step"], state["tokens"], state["skipped"]
        self.nonfinite_in_row, self.last_eval = state["nonfinite_in_row"], state.get("last_eval", {})
        self.best = state.get("best", {})
        self.predicted = state.get("predicted", 0)
        self.watched, self.stale_evals = state.get("watched"), state.get("stale_evals", 0)

    def request_stop(self, why: str) -> None:
        """Ask the run to stop (safe from a signal handler: it only notes the request). Every rank
        learns of any rank's request in the next step's all-reduce, finishes that step, saves a
        checkpoint of it together with the others and ends: a preempted job loses no steps."""
        self.stop_requested = self.stop_requested or why

    def _all_reduce(self, values: list) -> torch.Tensor:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        return summed(t) if self.world > 1 else t

    def train_step(self, batches) -> float:
        """One optimizer step of grad_accum finite micro-batches; returns the mean loss over ranks.

        A micro-batch whose loss is non-finite on any rank is dropped by every rank together (no
        backward, no engine step), so none of its gradient reaches the weights.
        """
        self.engine.train()
        for layer in self.redrawing:
            layer.redraw(self.step + 1)
        losses = []
        while len(losses) < self.grad_accum:
            batch = next(batches)
            loss, _ = self.loss_fn(self.engine, batch)
            tokens, predicted = _count_tokens(batch)
            value = loss.item()
            finite = math.isfinite(value)
            asked = bool(self.stop_requested)
            total, bad, tokens, predicted, stop = self._all_reduce(
                [value if finite else 0.0, not finite, tokens, predicted, asked]
            )
            if stop > 0 and not self.stopping:
                self.stopping = self.stop_requested or "a stop request to another rank"
            if bad > 0:
                self.skipped += 1
                self.nonfinite_in_row += 1
                self.monitor.note(f"step {self.step + 1}: non-finite loss on {int(bad)} rank(s); batch skipped")
                if self.nonfinite_in_row >= self.cfg.max_nonfinite:
                    raise NonFiniteLossError(
                        f"{self.nonfinite_in_row} non-finite losses in a row at step {self.step + 1} "
                        f"(train.max_nonfinite={self.cfg.max_nonfinite}); lower train.lr or check the data"
                    )
                continue
            self.nonfinite_in_row = 0
            self.engine.backward(loss)
            self.engine.step()
            losses.append(total.item() / self.world)
            self.tokens += int(tokens)  # input tokens of all ranks, padding excluded
            self.predicted += int(predicted)  # of which the model predicted a label (for FLOPs)
        self.step += 1
        if self.heartbeat is not None and time.monotonic() - self._last_beat > 2.0:
            self.heartbeat(self.step)
            self._last_beat = time.monotonic()
        return sum(losses) / len(losses)

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Metrics over the validation batches, the same ones every time: one whole pass
        (train.eval_batches null) or its first eval_batches micro-batches per rank. A pass scores
        every example exactly once at any world size: the last batches are filled up with examples
        from the start of the stream whose labels are ignored. Every quantity the loss function
        reports is summed over batches and ranks, then turned into metrics by ``eval_metrics``.
        A stop request on any rank ends it between batches (None; see StopPoll): a whole pass can
        outlast the seconds a preempted job has to save its step."""
        self.engine.eval()
        self.val_batches.consumed = 0
        size = len(self.val_batches.dataset)
        n = math.ceil(size / (self.val_batches.micro * self.world))  # one pass
        if self.cfg.eval_batches is not None:
            n = min(self.cfg.eval_batches, n)
        sums: dict = {}
        stop = StopPoll(self)
        for i, batch in enumerate(_take(self.val_batches, n)):
            if stop(i):
                self.engine.train()
                return None
            batch["labels"][batch["position"] >= size] = IGNORE  # a second look at an example: no score
            accumulate(sums, *self.loss_fn(self.engine, batch))
        stop.finish()  # a request it answers now is seen at the next step's all-reduce
        if self.world > 1:
            sums = {k: summed(v) for k, v in sums.items()}
        self.engine.train()
        return self.eval_metrics({k: (v.item() if v.dim() == 0 else v) for k, v in sums.items()})

    @torch.no_grad()
    def inspect(self, sequences: int = 2, tokens: int = 256) -> dict:
        """Per layer and head, the attention entropy and mean attended distance on the first
        validation sequences (cut short: the eager kernel holds every weight); an encoder-decoder's
        per stack (encoder_entropy, decoder_distance, ..., and the cross-attention's entropy). Every
        rank runs it, as ZeRO-3 gathers parameters collectively."""
        from pretrain.model.inspect import attention_weights, seq2seq_attention_weights, stack_statistics

        self.val_batches.consumed = 0
        batch = next(_take(self.val_batches, 1))
        model = self.engine.module
        device = next(model.parameters()).device

        def cut(name: str):
            return batch[name][:sequences, :tokens].to(device) if batch.get(name) is not None else None

        ids, mask = cut("input_ids"), cut("attention_mask")
        if "decoder_input_ids" not in batch:
            return stack_statistics("self", attention_weights(model, ids, mask), mask)
        target_mask = cut("decoder_attention_mask")
        stacks = seq2seq_attention_weights(model, ids, cut("decoder_input_ids"), mask, target_mask)
        masks = {"encoder": mask, "decoder": target_mask, "cross": target_mask}  # the queries' padding
        return {f"{stack}_{name}": values for stack, weights in stacks.items()
                for name, values in stack_statistics(stack, weights, masks[stack]).items()}  # fmt: skip

    def fit(self) -> None:
        try:
            self._fit()
        except BaseException:
            if self.heartbeat is not None:  # the last word of a rank that is still alive
                self.heartbeat(self.step)
            raise

    def _fit(self) -> None:
        batches = iter(self.train_batches)
        last_log, last_tokens, last_predicted, window = self.step, self.tokens, self.predicted, []
        end = self._end()
        if self.step and self._eval_due(self.step == end) and self.last_eval.get("step") != self.step:
            # resumed from a step whose evaluation a stop left unmade (during it, or before it began)
            self.monitor.note(f"step {self.step}: evaluating it, as the run stopped before its evaluation ended")
            if self._evaluate_here(self.step == end) in ("stopped", "early"):
                return
        while self.step < end:
            window.append(self.train_step(batches))
            last = self.step == end
            if self.step % self.log_every == 0 or last or self.stopping:
                steps = self.step - last_log
                self.monitor.step(self.step, self._metrics(sum(window) / len(window)), tokens=self.tokens - last_tokens,
                                  predicted=self.predicted - last_predicted, steps_since_last=steps)  # fmt: skip
                last_log, last_tokens, last_predicted, window = self.step, self.tokens, self.predicted, []
            else:
                self.monitor.progress(self.step)
            if self.stopping and not last:  # no evaluation: a preempted job has seconds, not minutes
                self._stop_here()
                break
            if self._eval_due(last):
                outcome = self._evaluate_here(last)
                if outcome in ("stopped", "early"):
                    break
                if outcome == "best":
                    continue
            if self.checkpoint(self, last):
                self.monitor.restart_clock()

    def _end(self) -> int:
        return min(self.cfg.max_steps, self.cfg.stop_at_step or self.cfg.max_steps)

    def _eval_due(self, last: bool) -> bool:
        return self.val_batches is not None and bool(self.eval_every) and (self.step % self.eval_every == 0 or last)

    def _evaluate_here(self, last: bool) -> str:
        """Evaluate this step and act on it: "stopped" (a stop came during it: the step is saved),
        "early" (early stopping: saved, the run ends finished), "best" (saved as the best so far),
        or "" (nothing saved)."""
        scores = self.evaluate()
        if scores is None:
            self._stop_here()
            return "stopped"
        self.last_eval = {"step": self.step, **scores}
        self.monitor.eval(self.step, {k: v for k, v in self.last_eval.items() if k != "step"})
        if self.inspect_every and (self.step // self.eval_every) % self.inspect_every == 0:
            self.monitor.attention(self.step, self.inspect())
        stop = self._stale() and self.step < self._end()
        if self._improved():
            self.best = {"step": self.step, self.select_metric[0]: self.last_eval[self.select_metric[0]]}
            self.checkpoint(self, last, best=True)
            self.monitor.restart_clock()
            return "best"
        if stop:  # early stopping: end here as a finished run, with a checkpoint of this step
            name = (self.select_metric or ("val_loss", min))[0]
            self.stopped_early = (f"stopped early at step {self.step}: {name} has not improved for "
                                  f"{self.stale_evals} evaluations (best {self.watched:.4g})")  # fmt: skip
            self.checkpoint(self, True)
            return "early"
        return ""

    def _stop_here(self) -> None:
        """Save a checkpoint of this step and end as stopped (a signal, or another rank's)."""
        self.stopped = f"stopped at step {self.step} on {self.stopping}"
        self.monitor.note(f"{self.stopped}: saving a checkpoint of this step")
        self.checkpoint(self, True)

    def _stale(self) -> bool:
        """Note the last evaluation against the best so far of the watched metric (the task's, or
        val_loss); True once train.early_stopping_patience evaluations in a row did not improve it."""
        name, better = self.select_metric or ("val_loss", min)
        value = self.last_eval[name]
        if self.watched is None or better(value, self.watched) != self.watched:
            self.watched, self.stale_evals = value, 0
        else:
            self.stale_evals += 1
        patience = self.cfg.early_stopping_patience
        return patience is not None and self.stale_evals >= patience

    def _improved(self) -> bool:
        if self.select_metric is None:
            return False
        name, better = self.select_metric
        if not self.best:
            return True
        return better(self.last_eval[name], self.best[name]) != self.best[name]

    def _metrics(self, loss: float) -> dict:
        opt = self.engine.optimizer
        scale = getattr(opt, "cur_scale", None) or getattr(getattr(opt, "loss_scaler", None), "cur_scale", None)
        norm = self.engine.get_global_grad_norm()
        return {"loss": loss, "lr": self.engine.get_lr()[0], "grad_norm": float(norm) if norm is not None else math.nan,
                "loss_scale": float(scale) if scale else 1.0, "tokens": self.tokens, "epoch": self.train_batches.epoch,
                "skipped_batches": self.skipped}  # fmt: skip


def _count_tokens(batch: dict) -> tuple[int, int]:
    """Real input tokens (padding excluded) and the token labels to predict (next tokens, masked
    tokens, responses, an encoder-decoder's targets; a classifier's labels are per sequence: none)."""
    ids, labels = batch["input_ids"], batch.get("labels")
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
    predicted = int((labels != IGNORE).sum()) if labels is not None and labels.dim() == ids.dim() else 0
    return tokens, predicted


def _take(batches, n: int):
    it = iter(batches)
    for _ in range(n):
        yield next(it)
