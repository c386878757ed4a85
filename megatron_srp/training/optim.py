"""Model wrapping, optimizer and schedule, all from Megatron-Core's own building blocks."""

from __future__ import annotations

import torch

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_srp.config import Recipe, recipe_from_dict


def wrap_ddp(recipe: Recipe, config, chunks: list[torch.nn.Module]) -> list[DistributedDataParallel]:
    p, o = recipe.parallel, recipe.optimizer
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=p.overlap_grad_reduce,
        overlap_param_gather=p.overlap_param_gather,
        use_distributed_optimizer=o.use_distributed_optimizer,
        check_for_nan_in_grad=True,
    )
    # Without this, DP gradients are silently never all-reduced (losses drift, no error).
    config.finalize_model_grads_func = finalize_model_grads
    wrapped = [
        DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                # Bucketing is for overlapping comms; chunks after the first skip it.
                                disable_bucketing=(i > 0))
        for i, chunk in enumerate(chunks)
    ]
    for w in wrapped:
        w.broadcast_params()
    return wrapped


def build_optimizer(recipe: Recipe, model):
    o, prec = recipe.optimizer, recipe.precision
    cfg = MegatronOptimizerConfig(
        optimizer=o.optimizer,
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=prec.bf16,
        params_dtype=torch.bfloat16 if prec.bf16 else torch.float32,
        use_distributed_optimizer=o.use_distributed_optimizer,
        overlap_param_gather=recipe.parallel.overlap_param_gather,
    )
    return get_megatron_optimizer(cfg, model)


def build_scheduler(recipe: Recipe, optimizer) -> OptimizerParamScheduler:
    s, o, t = recipe.scheduler, recipe.optimizer, recipe.training
    decay_iters = s.lr_decay_iters or t.train_iters
    # Megatron-LM's scheduler counts in samples; one step = global_batch_size samples.
    gbs = t.global_batch_size
    wsd_iters = s.lr_wsd_decay_iters if s.lr_wsd_decay_iters is not None else max(1, decay_iters // 10)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if s.lr_warmup_iters > 0 else o.lr,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=s.lr_warmup_iters * gbs,
        lr_decay_steps=decay_iters * gbs,
        lr_decay_style=s.lr_decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=decay_iters * gbs,
        wd_incr_style="constant",
        # The recipe's values always win in load_state_dict (only the step count is read): with
        # scheduler.on_resume=checkpoint, resume_schedule has put the checkpoint's values into the recipe.
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
        wsd_decay_steps=wsd_iters * gbs if s.lr_decay_style == "WSD" else None,
        lr_wsd_decay_style=s.lr_wsd_decay_style if s.lr_decay_style == "WSD" else None,
    )


def schedule_settings(recipe: dict) -> dict:
    """The recipe keys that shape the learning-rate schedule (``section.key`` -> value), with the
    lengths that default to the run's length written out."""
    o, s, t = recipe["optimizer"], recipe["scheduler"], recipe["training"]
    decay = s["lr_decay_iters"] or t["train_iters"]
    out = {f"optimizer.{k}": o[k] for k in ("lr", "min_lr", "weight_decay")}
    out.update({f"scheduler.{k}": v for k, v in s.items() if k != "on_resume"})
    out["scheduler.lr_decay_iters"] = decay
    if s["lr_wsd_decay_iters"] is None:
        out["scheduler.lr_wsd_decay_iters"] = max(1, decay // 10)
    return out


def resume_schedule(recipe: Recipe, saved: dict) -> tuple[Recipe, str]:
    """The recipe a resumed run continues with, and one line saying where its schedule came from.
    ``saved`` is the checkpoint's recipe (a dict; empty for a checkpoint written elsewhere)."""
    ours = schedule_settings(recipe.to_dict())
    if not saved:
        return recipe, "lr schedule from the recipe (the checkpoint holds no recipe)"
    theirs = schedule_settings(saved)
    changed = [k for k in ours if ours[k] != theirs.get(k)]
    if recipe.scheduler.on_resume == "recipe":
        diff = ", ".join(f"{k}={ours[k]} (checkpoint: {theirs.get(k)})" for k in changed)
        return recipe, f"lr schedule from the recipe (scheduler.on_resume=recipe): {diff or 'same as the checkpoint'}"
    tree = recipe.to_dict()
    for key in changed:
        section, name = key.split(".")
        tree[section][name] = theirs[key]
    diff = ", ".join(f"{k}={theirs[k]} (recipe: {ours[k]})" for k in changed)
    return (recipe_from_dict(tree),
            f"lr schedule from the checkpoint (scheduler.on_resume=checkpoint): {diff or 'same as the recipe'}")
