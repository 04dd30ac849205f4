"""One ``accelerate`` training loop for every stage: one CPU core to many GPUs, same command.

A *stage* object provides ``model`` (the trainable ``nn.Module``), ``discriminator`` (or ``None``),
``ema`` (bool), ``next_batch(batch_size, rng)``, ``loss(model, batch, step) -> (loss, logs, extra)``,
``disc_loss(disc, extra, step)`` and ``save(model, out, rng)``, and optionally ``validate(model) ->
{name: loss}`` over held-out data. The loop adds mixed precision, gradient accumulation, EMA, a time
or step budget, resumable state (``OUT/state``), a JSONL loss log (``OUT/log.jsonl``) and its plot
(``OUT/loss.png``). With ``validate``, every snapshot is scored (EMA weights) and the saved weights
are the best so far by its first value (``OUT/best.json``), so more steps can never ship an overfit model.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class LoopConfig:
    out: Path
    batch_size: int = 16
    lr: float = 2e-4
    max_steps: int | None = None
    minutes: float | None = None
    seed: int = 0
    mixed_precision: str = "no"
    grad_accum: int = 1
    resume: bool = False
    warmup_steps: int = 50
    log_every: int = 10
    save_every_minutes: float = 10.0
    keep_snapshots: bool = False  # also keep every snapshot in OUT/snapshots/step-N, best or not
    ema_decay: float = 0.999
    disc_lr: float | None = None


class StepCounter:
    """The global step, saved with the accelerate state so ``--resume`` continues the count."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def _optimizer(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, betas=(0.9, 0.99), weight_decay=1e-2)


def _warmup(optimizer, steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, steps)))


def _should_stop(accelerator, cfg: LoopConfig, step: int, start: float) -> bool:
    """Every process must agree, so the decision is reduced across processes (max)."""
    over = (cfg.max_steps is not None and step >= cfg.max_steps) or (
        cfg.minutes is not None and time.time() - start >= cfg.minutes * 60
    )
    flag = torch.tensor([float(over)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="max").item())


def train(stage, cfg: LoopConfig) -> dict:
    """Run the loop; returns ``{"steps", "seconds", "samples_per_s", "last": {...}}``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.training_utils import EMAModel

    cfg.out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum)
    set_seed(cfg.seed, device_specific=True)
    if hasattr(stage, "prepare"):
        stage.prepare(accelerator, cfg.out)
    model = stage.model
    optimizer = _optimizer(model.parameters(), cfg.lr)
    scheduler = _warmup(optimizer, cfg.warmup_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    disc = d_opt = None
    if stage.discriminator is not None:
        d_opt = _optimizer(stage.discriminator.parameters(), cfg.disc_lr or cfg.lr)
        disc, d_opt = accelerator.prepare(stage.discriminator, d_opt)
    counter = StepCounter()
    accelerator.register_for_checkpointing(counter)
    ema = None
    if stage.ema:
        ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=cfg.ema_decay, use_ema_warmup=True)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    state_dir = cfg.out / "state"
    if cfg.resume and state_dir.is_dir():
        accelerator.load_state(str(state_dir))
        accelerator.print(f"resumed from {state_dir} at step {counter.step}")

    log_path = cfg.out / "log.jsonl"
    start = last_save = time.time()
    first_step = counter.step
    running: dict[str, list[float]] = {}
    model.train()
    while not _should_stop(accelerator, cfg, counter.step, start):
        # Reseeded per step and process: a resumed run draws new batches, not the ones it saw.
        rng = np.random.default_rng([cfg.seed, counter.step, accelerator.process_index])
        batch = to_device(stage.next_batch(cfg.batch_size, rng), accelerator.device)
        with accelerator.accumulate(model):
            loss, logs, extra = stage.loss(model, batch, counter.step)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()} at step {counter.step}")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if disc is not None:
            with accelerator.accumulate(disc):
                d_loss, d_logs = stage.disc_loss(disc, extra, counter.step)
                if d_loss is not None:
                    accelerator.backward(d_loss)
                    d_opt.step()
                    d_opt.zero_grad(set_to_none=True)
                    logs.update(d_logs)
        if accelerator.sync_gradients:
            counter.step += 1
            if ema is not None:
                ema.step(accelerator.unwrap_model(model).parameters())
        for k, v in {"loss": loss.item(), **logs}.items():
            running.setdefault(k, []).append(v)
        if counter.step % cfg.log_every == 0 and accelerator.is_main_process:
            _log(log_path, counter.step, start, cfg, running, accelerator.num_processes, first_step)
            running = {}
        if time.time() - last_save > cfg.save_every_minutes * 60:
            accelerator.save_state(str(state_dir))
            if accelerator.is_main_process:
                _save_snapshot(stage, accelerator.unwrap_model(model), ema, cfg, counter.step)
            last_save = time.time()

    accelerator.wait_for_everyone()
    accelerator.save_state(str(state_dir))
    seconds = time.time() - start
    summary = {}
    if accelerator.is_main_process:
        if running:
            _log(log_path, counter.step, start, cfg, running, accelerator.num_processes, first_step)
        final = accelerator.unwrap_model(model)
        if ema is not None:
            ema.copy_to(final.parameters())
        _save_if_best(stage, final, cfg, counter.step)
        plot_losses(log_path, cfg.out / "loss.png")
        done = counter.step - first_step
        summary = {
            "steps": counter.step,
            "seconds": round(seconds, 1),
            "samples_per_s": round(done * cfg.batch_size * cfg.grad_accum * accelerator.num_processes / seconds, 2),
            "last": read_log(log_path)[-1] if log_path.is_file() else {},
        }
        if (cfg.out / "best.json").is_file():
            summary["best"] = json.loads((cfg.out / "best.json").read_text())
        (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2))
        accelerator.print(json.dumps(summary))
    accelerator.end_training()
    return summary


def _save_snapshot(stage, model, ema, cfg: LoopConfig, step: int) -> None:
    """The weights so far (EMA when on), saved as the final ones would be, so a run can be scored mid-way."""
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    _save_if_best(stage, model, cfg, step)
    if ema is not None:
        ema.restore(model.parameters())


def _save_if_best(stage, model, cfg: LoopConfig, step: int) -> None:
    """Save ``model``; with ``stage.validate``, log its held-out scores and save only a new best.

    With ``cfg.keep_snapshots`` every snapshot is also kept in ``OUT/snapshots/step-N``, so it can be
    chosen afterwards by a measure the loop does not compute (``mmsr.training.calibrate``: the gate
    margins at the shipped sampler; held-out x0-MSE alone picked a worse model for ``lite`` v3)."""
    if cfg.keep_snapshots:
        stage.save(model, cfg.out / "snapshots" / f"step-{step:06d}", np.random.default_rng(cfg.seed + 12345))
    scores = stage.validate(model) if hasattr(stage, "validate") else {}
    if scores:
        record = {"step": step, **scores}
        with (cfg.out / "log.jsonl").open("a") as f:
            f.write(json.dumps({"validation": record}) + "\n")
        print(json.dumps({"validation": record}), flush=True)
        best_path = cfg.out / "best.json"
        key = next(iter(scores))
        best = json.loads(best_path.read_text()) if best_path.is_file() else None
        if best is not None and best[key] <= scores[key]:
            return
        best_path.write_text(json.dumps(record, indent=2))
    stage.save(model, cfg.out, np.random.default_rng(cfg.seed + 12345))


def to_device(batch, device):
    """Tensors (in dicts and lists) to ``device``; anything else unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


def _log(path: Path, step: int, start: float, cfg: LoopConfig, running: dict, world: int, first_step: int) -> None:
    elapsed = time.time() - start
    record = {"step": step, "minutes": round(elapsed / 60, 3)}
    record.update({k: round(float(np.mean(v)), 6) for k, v in running.items()})
    record["samples_per_s"] = round(
        (step - first_step) * cfg.batch_size * cfg.grad_accum * world / max(elapsed, 1e-6), 2
    )
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def read_log(path: Path) -> list[dict]:
    """The loss records (validation records, ``{"validation": ...}``, are left out)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "validation" not in r]


def plot_losses(log_path: Path, png: Path) -> None:
    """Every logged loss term against the step, one panel per term."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_path.is_file():
        return
    records = read_log(log_path)
    keys = [k for k in records[0] if k not in ("step", "minutes", "samples_per_s")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*pts))
        ax.set_title(key)
        ax.set_xlabel("step")
        if key in ("loss", "l1", "mse") and all(v > 0 for _, v in pts):
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
