"""Training settings: one pydantic model used by the Python API and by recipes (``train:`` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Optimisation, schedule, precision, evaluation and checkpoint settings. Sizes are global (all ranks)."""

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False
    )  # lr=.inf would poison every step

    epochs: int = Field(10, gt=0)
    max_steps: int | None = Field(
        None,
        gt=0,
        description="run length in optimizer steps (the LR schedule spans them) if fewer than epochs give",
    )
    batch_size: int = Field(128, gt=0, description="global batch size, split across ranks")
    eval_batch_size: int = Field(512, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm")
    bf16: bool = Field(False, description="bfloat16 autocast for the forward pass")
    ema: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep an exponential moving average of the student's weights with this decay "
        "(Ultralytics: 0.9999) and evaluate, checkpoint and save it instead of the raw weights",
    )
    ema_tau: float = Field(
        2000.0,
        gt=0,
        description="EMA warm-up in steps: the decay is ema * (1 - exp(-step / ema_tau))",
    )
    seed: int = 0
    deterministic: bool = False
    eval_every: int = Field(1, ge=1, description="evaluate every N epochs (and after the last)")
    checkpoint_every: int | None = Field(None, gt=0, description="also save 'last' every N steps")
    keep_checkpoints: int = Field(
        2, ge=1, description="how many 'last' checkpoints to keep (older ones are the fallback)"
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="NaN/inf loss or gradients: stop (keeping the last good checkpoint) or skip the step",
    )
    max_skipped_steps: int = Field(
        10,
        ge=1,
        description="with on_nonfinite=skip, stop after this many non-finite steps in a row",
    )
    log_every: int = Field(20, gt=0, description="write a metrics line every N steps")
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = False
