"""The recipe's optimizer and learning-rate schedule, from the preset's `train.optimizer` / `train.lr_scheduler`, for
every model family and the smoke run: what the preset says is what trains, with no copy written by hand elsewhere.

NeMo reads them in two schemas, both written here from the one config: speechlm2's SALM instantiates
`model.cfg.optimizer` / `model.cfg.lr_scheduler` by hydra `_target_` (speechlm2/parts/optim_setup.py); an ASRModel
builds `model.cfg.optim` from a registry name with a nested `sched` (ModelPT.setup_optimization). `torch_optimizer`
serves the loops that drive torch directly (`medasr bench`, the Whisper family's LightningModule).
"""

from __future__ import annotations

from typing import Any

# train.optimizer.name / train.lr_scheduler.name are checked against medasr.config.OPTIMIZERS / SCHEDULERS at load

SCHEDULER_MODULE = "nemo.core.optim.lr_scheduler"


def optimizer_args(opt) -> dict[str, Any]:
    """The torch.optim keyword arguments of an OptimizerConfig."""
    return {"lr": float(opt.lr), "betas": [float(b) for b in opt.betas], "eps": float(opt.eps),
            "weight_decay": float(opt.weight_decay)}


def _schedule(train) -> dict[str, Any]:
    s = train.lr_scheduler
    return {"warmup_steps": int(s.warmup_steps), "min_lr": float(s.min_lr), "max_steps": int(train.max_steps)}


SCHEMAS = ("speechlm2", "modelpt")  # ModelFamily.optim_schema


def apply_recipe(model, train, schema: str, constant_lr: bool = False) -> None:
    """Write the recipe into a NeMo model's config in the schema its family reads (`SCHEMAS`);
    `constant_lr` drops the schedule (the smoke run)."""
    from omegaconf import open_dict

    opt, sched = train.optimizer, None if constant_lr else train.lr_scheduler.name
    with open_dict(model.cfg):
        if schema == "speechlm2":
            model.cfg.optimizer = {"_target_": f"torch.optim.{opt.name}", **optimizer_args(opt)}
            model.cfg.pop("lr_scheduler", None)
            if sched is not None:
                model.cfg.lr_scheduler = {"_target_": f"{SCHEDULER_MODULE}.{sched}", **_schedule(train)}
        elif schema == "modelpt":
            # NeMo's optimizer registry names torch's classes in lower case (nemo.core.optim.optimizers)
            model.cfg.optim = {"name": opt.name.lower(), **optimizer_args(opt)}
            if sched is not None:
                model.cfg.optim.sched = {"name": sched, **_schedule(train)}
        else:
            raise ValueError(f"optimizer schema {schema!r}: one of {SCHEMAS}")


def torch_optimizer(params, opt, **extra):
    """The OptimizerConfig's torch.optim class over `params` (extra: e.g. fused=True on a GPU)."""
    import torch

    return getattr(torch.optim, opt.name)(params, **optimizer_args(opt), **extra)


def recipe_record(trainer) -> dict[str, Any]:
    """The optimizer and scheduler a Lightning trainer actually built, for RUN/train/recipe.json and smoke.json."""
    opt = trainer.optimizers[0]
    group = opt.param_groups[0]
    scheds = [c.scheduler for c in trainer.lr_scheduler_configs]
    return {"optimizer": type(opt).__name__,
            "lr": float(group.get("initial_lr", group["lr"])),
            **{k: (list(group[k]) if isinstance(group[k], tuple) else group[k])
               for k in ("betas", "eps", "weight_decay") if k in group},
            "lr_scheduler": type(scheds[0]).__name__ if scheds else None,
            **({k: getattr(scheds[0], k) for k in ("warmup_steps", "min_lr", "max_steps") if hasattr(scheds[0], k)}
               if scheds else {})}
