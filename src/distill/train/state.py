"""What a checkpoint holds of a training run, and how a resumed run gets it back.

A checkpoint (see :mod:`distill.train.checkpoint` for the files) holds the trainable weights, the
optimizer state, the weight average (``train.ema``), what each rank's teacher source keeps between
steps (:meth:`~distill.distiller.TeacherSource.state_tensors`: the replay buffer) and a JSON state:
the step counters, the best and every evaluation, the non-finite and fp16-scaler counts, the
callbacks' own state, a stop a callback asked for, the training config, an unfinished logging window
and the seconds spent generating and training. :func:`run_state` gathers it; :func:`restore` puts it back.
A run's end writes ``summary.json`` (:func:`run_summary`) and, when complete, ``model.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distill.data.transfer import TransferSet
from distill.io import remove_stale_temporaries, write_error, write_json
from distill.train.checkpoint import (
    EMA_PREFIX,
    SOURCE_PREFIX,
    Loaded,
    model_tensors,
    optimizer_state_from_json,
    save_model,
    state_tensors,
    unflatten_state,
)
from distill.train.distributed import gather_objects
from distill.train.ema import WeightEMA
from distill.train.fsdp import full_state, load_sharded, save_sharded
from distill.train.logging import truncate_metrics

if TYPE_CHECKING:
    from distill.train.trainer import Trainer


def check_writable(checkpoint_dir: Path) -> None:
    """Fail in the first second, not at the first checkpoint, when ``checkpoint_dir`` cannot be written."""
    try:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(checkpoint_dir)
        probe = checkpoint_dir / f".write-probe-{id(checkpoint_dir)}.tmp"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise write_error(err, checkpoint_dir, "checkpoints") from None


def run_state(trainer: Trainer) -> dict[str, Any]:
    """The checkpoint's JSON state of ``trainer`` (everything but tensors)."""
    stepper, guard = trainer.stepper, trainer.guard
    return {
        "epoch": trainer.epoch,
        "epoch_step": trainer.epoch_step,
        "global_step": trainer.global_step,
        "best": trainer.best,
        "history": trainer.history,
        "skipped_steps": guard.skipped,
        "skipped_in_a_row": guard.in_a_row,
        "scaler": stepper.scaler.state_dict() if stepper.scaler.is_enabled() else None,
        "scaler_skipped": stepper.scaler_skipped,
        "scaler_in_a_row": stepper.scaler_in_a_row,
        "ema_updates": trainer.ema.updates if trainer.ema is not None else None,
        "callbacks": trainer.callbacks.state(),
        "stop_reason": trainer.stop_reason,
        "config": trainer.config.model_dump(),
        "log_window": log_window(trainer),
        "time_spent": trainer.time_spent,
    }


def log_window(trainer: Trainer) -> dict[str, Any] | None:
    """The logging window a run stopped inside an epoch carries on when resumed (None at an epoch's
    end, where the next epoch starts a window anyway)."""
    if trainer.epoch_step == 0:
        return None
    return trainer.log.window() if trainer.log is not None else trainer.log_window


def signature(state: dict[str, Any]) -> str:
    """``state`` as one comparable string: equal strings, nothing to save again."""
    return json.dumps(state, sort_keys=True, default=str)


def save(trainer: Trainer, tag: str, with_optimizer: bool) -> Path | None:
    """Write the ``tag`` checkpoint (rank 0); None when nothing was written: no run dir, another rank,
    or a ``last`` identical to the newest one (stopped right after a checkpoint)."""
    if trainer.store is None:
        return None
    kept = source_tensors(trainer)  # every rank takes part: each keeps its own samples
    if not (trainer.dist.is_main or trainer.fsdp):
        return None
    state = run_state(trainer)
    sig = signature(state)
    if tag == "last" and sig == trainer._saved_last:
        return None
    model: Any = trainer.distiller.trainable()
    optimizer = trainer.optimizer if with_optimizer else None
    if trainer.fsdp:  # every rank writes its shards; rank 0 the gathered weights and the state
        if optimizer is not None:
            state["sharded"] = save_sharded(
                trainer.store.directory, trainer.global_step, model, optimizer, trainer.dist,
                trainer.config.keep_checkpoints,
            )  # fmt: skip
        model, optimizer = full_state(model), None
        if not trainer.dist.is_main:
            trainer._saved_last = sig if tag == "last" else trainer._saved_last
            return None
    ema = trainer.ema
    extra = state_tensors(ema.module.state_dict(), EMA_PREFIX) if ema is not None else {}
    extra.update(kept)
    # a second 'last' at one step (after an evaluation) goes to a new file: see CheckpointStore.save
    path = trainer.store.save(tag, model, state, optimizer, extra)
    if tag == "last":
        trainer._saved_last = sig
    return path


def source_tensors(trainer: Trainer) -> dict[str, torch.Tensor]:
    """What the teacher source of every rank keeps between steps (the replay buffer), as
    ``source.rank<r>.<name>`` tensors; under ``torchrun`` a collective, so every rank calls it."""
    source = trainer.distiller.source
    if source is None:
        return {}
    own = {k: v.detach().cpu() for k, v in source.state_tensors().items()}
    out: dict[str, torch.Tensor] = {}
    for rank, part in enumerate(gather_objects(own, trainer.dist)):
        out.update(state_tensors(part, f"{SOURCE_PREFIX}rank{rank}."))
    return out


def resume(trainer: Trainer) -> None:
    """Load ``trainer``'s last checkpoint into it (weights, optimizer, counters, callbacks, EMA) and
    drop the metrics records of the steps about to run again; a run with no checkpoint starts over."""
    store, is_main = trainer.store, trainer.dist.is_main
    if store is None:
        return
    if not store.has("last"):  # stopped before its first checkpoint: the run starts over
        if is_main and trainer.run_dir is not None:
            truncate_metrics(trainer.run_dir, 0, eval_steps=())
        return
    if is_main:
        store.cleanup()  # temporaries and unlisted files a killed process left behind
    loaded = store.load("last")
    if is_main:
        _warn_recovered(trainer, loaded)
    restore(trainer, loaded.tensors, loaded.state)
    if is_main and trainer.run_dir is not None:  # those steps are about to run again
        evaluated = [record.get("step") for record in trainer.history]
        truncate_metrics(trainer.run_dir, trainer.global_step, eval_steps=evaluated)
    trainer._saved_last = signature(run_state(trainer))
    if is_main:
        trainer.console.print(
            f"[green]resumed[/] from {trainer.checkpoint_dir} at epoch {trainer.epoch}, "
            f"step {trainer.global_step}"
        )


def _warn_recovered(trainer: Trainer, loaded: Loaded) -> None:
    if loaded.recovered:
        trainer.console.print(
            f"[yellow]warning[/]: {trainer.store.manifest_path} was missing; the list of checkpoints "
            "was rebuilt from the files' own headers",
            soft_wrap=True,
        )
    for problem in loaded.skipped:
        trainer.console.print(
            f"[yellow]warning[/]: {problem}; using an older checkpoint", soft_wrap=True
        )


def restore(trainer: Trainer, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Put a checkpoint's ``tensors`` and JSON ``state`` back into ``trainer`` (its optimizer built)."""
    if trainer.fsdp:  # the sharded weights and optimizer state the checkpoint names
        load_sharded(
            trainer.store.directory, state, trainer.distiller.trainable(), trainer.optimizer
        )
    else:
        trainer.distiller.trainable().load_state_dict(model_tensors(tensors))
    if "optimizer" in state and not trainer.fsdp:
        trainer.optimizer.load_state_dict(
            optimizer_state_from_json(unflatten_state(state["optimizer"], tensors))
        )
    trainer.epoch, trainer.epoch_step = state["epoch"], state["epoch_step"]
    trainer.global_step = state["global_step"]
    trainer.best, trainer.history = state["best"], state["history"]
    trainer.guard.skipped = state.get("skipped_steps", 0)
    trainer.guard.in_a_row = state.get("skipped_in_a_row", 0)
    stepper = trainer.stepper
    if stepper.scaler.is_enabled() and state.get("scaler"):
        stepper.scaler.load_state_dict(state["scaler"])
    stepper.scaler_skipped = state.get("scaler_skipped", 0)
    stepper.scaler_in_a_row = state.get("scaler_in_a_row", 0)
    trainer.stop_reason = state.get("stop_reason")
    trainer.log_window = state.get("log_window")
    trainer.time_spent = dict(state.get("time_spent") or {})
    console = trainer.console if trainer.dist.is_main else None
    trainer.callbacks.load(state.get("callbacks"), console)
    if trainer.ema is not None:
        _restore_ema(trainer, tensors, state)
    if trainer.distiller.source is not None:  # this rank's own part
        own = model_tensors(tensors, f"{SOURCE_PREFIX}rank{trainer.dist.rank}.")
        trainer.distiller.source.load_state_tensors(own)


def _restore_ema(trainer: Trainer, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """The average saved with the checkpoint, or (a run that had no EMA) one started from its weights."""
    assert trainer.ema is not None
    saved = model_tensors(tensors, EMA_PREFIX)
    if saved:
        trainer.ema.module.load_state_dict(saved)
        trainer.ema.updates = int(state.get("ema_updates") or 0)
        return
    trainer.ema = WeightEMA(trainer.distiller.student, trainer.ema.decay, trainer.ema.tau)
    if trainer.dist.is_main:
        trainer.console.print(
            f"[yellow]warning[/]: the checkpoint in {trainer.checkpoint_dir} has no weight average "
            "(train.ema was off); starting one from its weights",
            soft_wrap=True,
        )


def run_meta(trainer: Trainer) -> dict[str, Any]:
    """Where and how the run runs, for the loggers (W&B config ``run``, MLflow tags)."""
    return {
        "run_dir": str(trainer.run_dir) if trainer.run_dir else None,
        "device": str(trainer.device),
        "world_size": trainer.dist.world_size,
        "torch": torch.__version__,
        "start_step": trainer.global_step,  # a resumed run starts past 0
    }


def run_summary(trainer: Trainer, last: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``: the best and ``last`` evaluation, every evaluation, steps and where it ran."""
    summary = {
        "primary_metric": trainer.task.primary_metric,
        "best": trainer.best,
        "last": last,
        "history": trainer.history,
        "steps": trainer.global_step,
        "skipped_steps": trainer.skipped_steps,
        # where it ran: train.device auto may have fallen back to the CPU
        "device": str(trainer.device),
        "torch": torch.__version__,
        "world_size": trainer.dist.world_size,
    }
    if isinstance(trainer.train_data, TransferSet):  # how many labels the student saw
        summary["labels"] = trainer.train_data.labels_seen(
            trainer.global_step,
            trainer.local_batch,
            trainer.config.grad_accum_steps * trainer.dist.world_size,
        )
    if trainer.stop_reason is not None:
        summary["stopped"] = trainer.stop_reason
    if trainer.time_spent:  # a data mode that samples: seconds generating and training, apart
        summary["time"] = {k: round(v, 3) for k, v in sorted(trainer.time_spent.items())}
    return summary


def write_outputs(trainer: Trainer, summary: dict[str, Any], complete: bool) -> None:
    """Write ``summary.json`` and, for a ``complete`` run, hand over the final student (rank 0)."""
    run_dir = trainer.run_dir
    final: Any = trainer.final_student
    if trainer.fsdp and complete and run_dir is not None:
        final = full_state(final)  # gathered by every rank, kept by rank 0
    if run_dir is None or not trainer.dist.is_main:
        return
    try:
        write_json(run_dir / "summary.json", summary)
        if complete:
            save_model(run_dir / "model.safetensors", final)
    except OSError as err:
        raise write_error(err, run_dir, "summary") from None
