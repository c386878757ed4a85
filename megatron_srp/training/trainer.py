"""The pretraining loop. Reads top to bottom: set up, build, resume, step, log, evaluate, save.

Everything heavy is Megatron-Core's: GPTModel (model.py), DistributedDataParallel and
get_megatron_optimizer (optim.py), get_forward_backward_func (the 1F1B / interleaved schedules),
OptimizerParamScheduler, dist_checkpointing (checkpointing.py), GPTDataset (data.py).
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial
from typing import Optional

import torch

from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_attr_wrapped_model

from megatron_srp.config import Recipe, RecipeError, padded_vocab_size
from megatron_srp.data.gpt_dataset import ROLE_REFLECTION
from megatron_srp.training import checkpointing, distributed
from megatron_srp.training.data import build_datasets, build_iterator, check_data_files, check_token_ids
from megatron_srp.training.metrics import (MetricsWriter, check_wandb, console_line, device_name, format_loss,
                                           gpu_peak_tflops, peak_memory_gib, verdict_line)
from megatron_srp.training.model import (build_model_chunk, build_transformer_config, model_flops_per_token,
                                         resolve_transformer_impl)
from megatron_srp.training.optim import build_optimizer, build_scheduler, resume_schedule, wrap_ddp
from megatron_srp.training.quiet import backend_note, missing_kernel_warnings_ignored
from megatron_srp.training.reflection_metrics import VerdictTokens, other_verdict, verdict_report, verdict_tokens
from megatron_srp.training.signals import ExitRequest

log = logging.getLogger("megatron_srp")


# ---------------------------------------------------------------------------------------------
# Forward step and loss
# ---------------------------------------------------------------------------------------------


def loss_func(reflection_loss: str, loss_mask: torch.Tensor, roles: Optional[torch.Tensor], output: torch.Tensor):
    """Per-token loss summed over the trained tokens; Megatron divides by the global token count.

    Returns (loss_sum, num_tokens, report) where each report entry is [sum, count] so that
    microbatches and data-parallel ranks aggregate exactly."""
    losses = output.float()
    mask = loss_mask.float()
    report = {}
    if roles is not None:
        refl = (roles == ROLE_REFLECTION).float() * mask
        text = mask - refl
        report["loss_text"] = torch.stack([(losses * text).sum(), text.sum()]).detach()
        report["loss_reflection"] = torch.stack([(losses * refl).sum(), refl.sum()]).detach()
        if reflection_loss == "mask":
            mask = text
    loss_sum = (losses * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    # The schedule scales the returned loss in place; report a detached clone.
    report["loss"] = torch.stack([loss_sum.detach().clone(), mask.sum()])
    return loss_sum, num_tokens, report


def verdict_loss_func(reflection_loss: str, loss_mask: torch.Tensor, roles: torch.Tensor, labels: torch.Tensor,
                      verdicts: VerdictTokens, lm_loss, logits: torch.Tensor):
    """``loss_func`` on the losses read from the logits, plus the reflection-verdict entries."""
    sbv = logits.transpose(0, 1)  # the model returns [b, s, v]; its loss takes [s, b, v]
    # Megatron's vocab-parallel cross entropy works in place on the logits: each call gets its own copy.
    loss_true = lm_loss(labels, sbv.clone(memory_format=torch.contiguous_format))
    loss_other = lm_loss(other_verdict(verdicts, labels), sbv.clone(memory_format=torch.contiguous_format))
    loss_sum, num_tokens, report = loss_func(reflection_loss, loss_mask, roles, loss_true)
    report.update(verdict_report(verdicts, labels, roles, loss_mask, loss_true, loss_other))
    return loss_sum, num_tokens, report


def make_forward_step(recipe: Recipe, device: torch.device, verdicts: Optional[VerdictTokens] = None):
    """The forward step of training, or with ``verdicts`` (validation of data with a role sidecar) one
    that takes the logits, so the loss of the other verdict word is read from them too."""
    vocab_size = padded_vocab_size(recipe)

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        check_token_ids(batch["tokens"], vocab_size, recipe)
        tokens = batch["tokens"].to(device)
        position_ids = batch["position_ids"].to(device)
        labels = batch["labels"].to(device)
        attention_mask = batch.get("attention_mask")
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        loss_mask = batch["loss_mask"].to(device)
        roles = batch.get("roles")
        roles = None if roles is None else roles.to(device)
        if verdicts is None or roles is None:
            output = model(tokens, position_ids, attention_mask, labels=labels)
            return output, partial(loss_func, recipe.data.reflection_loss, loss_mask, roles)
        output = model(tokens, position_ids, attention_mask)  # logits on the last stage
        lm_loss = get_attr_wrapped_model(model, "compute_language_model_loss")
        return output, partial(verdict_loss_func, recipe.data.reflection_loss, loss_mask, roles, labels, verdicts,
                               lm_loss)

    return forward_step


def reduce_report(reports: list[dict], device) -> dict[str, Optional[float]]:
    """Sum [loss_sum, tokens] over microbatches and data-parallel ranks -> mean loss per key."""
    if not reports:
        return {}
    keys = sorted(reports[0])
    totals = torch.stack([torch.stack([r[k] for r in reports]).sum(0) for k in keys]).to(device)
    torch.distributed.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    out = {}
    for k, (s, n) in zip(keys, totals.tolist()):
        out[k] = s / n if n > 0 else None
    return out


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class _Interval:
    """Step times between two log lines."""

    def __init__(self):
        self.start = time.time()
        self.steps = 0
        self.step_s = 0.0

    def add(self, seconds: float) -> None:
        self.steps += 1
        self.step_s += seconds

    def mean_step_s(self) -> float:
        return self.step_s / self.steps

    def wall_s_per_step(self) -> float:
        return (time.time() - self.start) / self.steps


class Trainer:
    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.start_time = time.time()
        self.env = distributed.setup(recipe)
        r = recipe
        self.config = build_transformer_config(r, self.env.on_cpu)
        vpp = r.parallel.virtual_pipeline_model_parallel_size
        chunks = [build_model_chunk(r, self.config, self.env.on_cpu, vp_stage=i if vpp else None)
                  for i in range(vpp or 1)]
        if not self.env.on_cpu:
            for c in chunks:
                c.cuda(torch.cuda.current_device())
        self.model = wrap_ddp(r, self.config, chunks)
        self.optimizer = build_optimizer(r, self.model)
        self.scheduler = build_scheduler(r, self.optimizer)
        self.iteration = 0
        self.consumed_train = 0
        self.consumed_valid = 0
        self.num_microbatches = r.training.global_batch_size // (r.training.micro_batch_size * self.env.dp_size)
        self.forward_backward = get_forward_backward_func()
        self.forward_step = make_forward_step(r, self.env.device)
        self.eval_forward_step = make_forward_step(r, self.env.device, verdict_tokens(r))
        # Losses exist on the last pipeline stage; they are reduced over its data-parallel
        # group and written by one rank.
        self.holds_loss = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        self.is_logger = (self.holds_loss and parallel_state.get_tensor_model_parallel_rank() == 0
                          and parallel_state.get_data_parallel_rank() == 0)
        self.metrics = MetricsWriter(r, enabled=self.is_logger)
        self.flops_per_token = model_flops_per_token(r)
        self.peak_tflops = None if self.env.on_cpu else gpu_peak_tflops(device_name(), r.precision.fp8 is not None)
        n_params = sum(p.numel() for c in chunks for p in c.parameters())
        self._info(f"model: {n_params / 1e6:.2f}M parameters on this rank; layout TP={r.parallel.tensor_model_parallel_size} "
                   f"PP={r.parallel.pipeline_model_parallel_size} DP={self.env.dp_size}; "
                   f"{'cpu (gloo)' if self.env.on_cpu else device_name()}; "
                   f"{self.num_microbatches} microbatches of {r.training.micro_batch_size} per step")
        self._info(backend_note(resolve_transformer_impl(r, self.env.on_cpu), r.model.transformer_impl, self.env.on_cpu))

    def _info(self, msg: str) -> None:
        if self.env.is_main or self.is_logger:
            log.info(msg)

    # -- resume -----------------------------------------------------------------------------

    def resume(self) -> None:
        c = self.recipe.checkpoint
        if c.dir and checkpointing.read_tracker(c.dir) is not None:
            it = checkpointing.loadable_iteration(c.dir, c.on_damaged)
            st = checkpointing.load_checkpoint(self.recipe, c.dir, self.model, self.optimizer, iteration=it)
            self._info(f"resumed from {c.dir} at step {st.iteration}")
        elif c.load:
            st = checkpointing.load_checkpoint(self.recipe, c.load, self.model, self.optimizer, finetune=c.finetune)
            self._info(f"loaded {c.load}" + (" (weights only)" if c.finetune else f" at step {st.iteration}"))
        else:
            return
        self.iteration, self.consumed_train, self.consumed_valid = (
            st.iteration, st.consumed_train_samples, st.consumed_valid_samples)
        if st.scheduler_state is not None:
            self._restore_schedule(st)

    def _restore_schedule(self, st: checkpointing.LoadedState) -> None:
        """The step count from the checkpoint; lr, min_lr and lengths from where scheduler.on_resume
        says. The recipe in effect (saved with the next checkpoint) carries the values used."""
        self.recipe, line = resume_schedule(self.recipe, st.saved_recipe)
        # The scheduler reads each param group's max_lr / min_lr first; the loaded optimizer state
        # holds the checkpoint's.
        for group in self.optimizer.param_groups:
            group["max_lr"], group["min_lr"] = self.recipe.optimizer.lr, self.recipe.optimizer.min_lr
        self.scheduler = build_scheduler(self.recipe, self.optimizer)
        self.scheduler.load_state_dict(st.scheduler_state)
        self._info(line)

    def save(self) -> None:
        d = self.recipe.checkpoint.dir
        if not d:
            return
        secs = checkpointing.save_checkpoint(self.recipe, d, self.iteration, self.model, self.optimizer,
                                             self.scheduler, self.consumed_train, self.consumed_valid)
        self._info(f"saved checkpoint {checkpointing.iter_dir(d, self.iteration)} in {secs:.1f}s")

    # -- steps -------------------------------------------------------------------------------

    def _iterators(self, dataset, consumed: int):
        """One iterator per model chunk (the interleaved schedule reads one per virtual stage)."""
        n = len(self.model)
        its = [build_iterator(dataset, self.recipe, consumed) for _ in range(n)]
        return its if n > 1 else its[0]

    @staticmethod
    def _close(iterators) -> None:
        for it in iterators if isinstance(iterators, list) else [iterators]:
            if it is not None:
                it.close()

    def train_step(self, data_iterator) -> tuple[dict, Optional[float]]:
        t = self.recipe.training
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = self.forward_backward(
            forward_step_func=self.forward_step, data_iterator=data_iterator, model=self.model,
            num_microbatches=self.num_microbatches, seq_length=self.recipe.model.seq_length,
            micro_batch_size=t.micro_batch_size, decoder_seq_length=self.recipe.model.seq_length,
            forward_only=False)
        ok, grad_norm, _ = self.optimizer.step()
        if ok:
            self.scheduler.step(increment=t.global_batch_size)
        else:
            log.warning("step %d skipped (non-finite gradients)", self.iteration + 1)
        stats = reduce_report(reports, self.env.device) if self.holds_loss else {}
        return stats, grad_norm

    @torch.no_grad()
    def evaluate(self, valid_ds) -> dict:
        t = self.recipe.training
        for chunk in self.model:
            chunk.eval()
        reports = []
        it = self._iterators(valid_ds, self.consumed_valid)
        try:
            for _ in range(t.eval_iters):
                reports += self.forward_backward(
                    forward_step_func=self.eval_forward_step, data_iterator=it, model=self.model,
                    num_microbatches=self.num_microbatches, seq_length=self.recipe.model.seq_length,
                    micro_batch_size=t.micro_batch_size, decoder_seq_length=self.recipe.model.seq_length,
                    forward_only=True)
                self.consumed_valid += t.global_batch_size
        finally:
            self._close(it)
        for chunk in self.model:
            chunk.train()
        return reduce_report(reports, self.env.device) if self.holds_loss else {}

    def _record(self, stats: dict, grad_norm, step_time: float, eta: float) -> dict:
        """One metrics.jsonl line. ``step_time``: the mean over the steps since the last line; ``eta``:
        the steps left times the wall time per step of that interval (evaluations and saves included)."""
        r, t = self.recipe, self.recipe.training
        tokens = t.global_batch_size * r.model.seq_length
        tflops = self.flops_per_token * tokens / step_time / self.env.world_size / 1e12
        rec = {
            "step": self.iteration,
            "consumed_tokens": self.consumed_train * r.model.seq_length,
            "loss": stats.get("loss"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "step_time_s": step_time,
            "tokens_per_s_per_device": tokens / step_time / self.env.world_size,
            "tflops_per_device": None if self.env.on_cpu else tflops,
            "mfu": None if self.peak_tflops is None else tflops / self.peak_tflops,
            "peak_memory_gib": peak_memory_gib(self.env.on_cpu),
            "eta_s": eta,
        }
        for k in ("loss_text", "loss_reflection"):
            if k in stats:
                rec[k] = stats[k]
        return rec

    def train(self, exit_req: Optional[ExitRequest] = None) -> str:
        """Run to train_iters or until asked to exit; returns why it stopped. ``exit_req`` installed
        before start-up (pretrain does) also catches a signal that arrives while the model builds,
        resumes or indexes data: the run then saves after its first step."""
        r, t = self.recipe, self.recipe.training
        self.resume()
        if self.iteration >= t.train_iters:
            self._info(f"nothing to do: step {self.iteration} >= training.train_iters={t.train_iters}")
            return "done"
        train_ds, valid_ds = build_datasets(r)
        train_it = self._iterators(train_ds, self.consumed_train)
        own_exit_req = exit_req is None
        if own_exit_req:
            exit_req = ExitRequest(t.exit_duration_minutes, self.start_time).install()
        save_interval = r.checkpoint.save_interval
        reason = "done"
        interval = _Interval()
        try:
            while self.iteration < t.train_iters:
                t0 = time.time()
                stats, grad_norm = self.train_step(train_it)
                interval.add(time.time() - t0)
                self.iteration += 1
                self.consumed_train += t.global_batch_size
                if self.is_logger and self.iteration % r.logging.log_interval == 0:
                    rec = self._record(stats, grad_norm, interval.mean_step_s(),
                                       interval.wall_s_per_step() * (t.train_iters - self.iteration))
                    interval = _Interval()
                    self.metrics.write(rec)
                    log.info(console_line(rec, t.train_iters))
                    if rec["loss"] is not None and not math.isfinite(rec["loss"]):
                        log.warning("loss is not finite at step %d", self.iteration)
                if t.eval_interval and self.iteration % t.eval_interval == 0 and valid_ds is not None:
                    val = self.evaluate(valid_ds)
                    if self.is_logger:
                        self.metrics.write({"step": self.iteration, "split": "validation", **val})
                        log.info(f"step {self.iteration:>6}/{t.train_iters} | validation loss "
                                 f"{format_loss(val.get('loss'))}" + verdict_line(val))
                saved = False
                if save_interval and self.iteration % save_interval == 0:
                    self.save()
                    saved = True
                stop = exit_req.should_exit(self.env.device)
                if stop is None and t.exit_interval and self.iteration % t.exit_interval == 0:
                    stop = "exit_interval reached"
                if stop is not None:
                    reason = stop
                    self._info(f"stopping at step {self.iteration}: {stop}")
                    if not saved:
                        self.save()
                    return reason
            if not (save_interval and self.iteration % save_interval == 0):
                self.save()
            return reason
        finally:
            self._close(train_it)
            if own_exit_req:
                exit_req.uninstall()
            self.metrics.close()


def pretrain(recipe: Recipe, save_init: bool = False) -> str:
    """Entry point used by tools/pretrain.py (and tests)."""
    if save_init and not recipe.checkpoint.dir:  # before any process group or model exists
        raise RecipeError("--save-init needs checkpoint.dir")
    # Installed first: a Slurm signal during start-up must not be lost (or kill the process).
    exit_req = ExitRequest(recipe.training.exit_duration_minutes).install()
    try:
        check_data_files(recipe)  # a typo in a data path fails in a second, not after the model is built
        check_wandb(recipe)
        with missing_kernel_warnings_ignored():
            trainer = Trainer(recipe)
        if save_init:
            trainer.save()
            return "saved initial weights"
        return trainer.train(exit_req)
    finally:
        exit_req.uninstall()
        distributed.teardown()
