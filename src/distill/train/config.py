"""Training settings: one pydantic model used by the Python API and by recipes (``train:`` section)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from distill.registry import UnknownNameError, check_kwargs
from distill.train.callbacks import CALLBACKS
from distill.train.loggers import DEFAULT_LOGGERS, LOGGERS

MAX_COUNT = 2**31 - 1  # sizes and counts beyond this overflow index arithmetic long before they fit
MAX_LR = 1000.0  # larger learning rates overflow float32 in the optimizer's update
ADAM_FAMILY = ("adamw", "adam", "nadam", "radam", "adamax")  # momentum is beta1; beta2 applies
OptimizerName = Literal["sgd", "adamw", "adam", "nadam", "radam", "adamax", "rmsprop", "adagrad"]


class ParamGroupSpec(BaseModel):
    """``{prefix: student.backbone, lr_scale: 0.1}``: the parameters under a module at their own rate."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prefix: str = Field(
        min_length=1,
        description="module name the group's parameters are under (student.backbone, projectors)",
    )
    lr_scale: float = Field(
        1.0, gt=0, description="the group's rate is lr times this, all run long"
    )
    weight_decay: float | None = Field(
        None, ge=0, description="the group's weight decay (default: weight_decay)"
    )


class CallbackSpec(BaseModel):
    """``{name: early_stopping, options: {metric: top1, patience: 3}}``: a registered callback."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="registered callback (`distill list callbacks`; plugins add more)"
    )
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> CallbackSpec:
        try:
            cls = CALLBACKS.get(self.name)
        except UnknownNameError as err:
            raise ValueError(str(err)) from None
        check_kwargs(cls, self.options, what=f"callback {self.name!r}")
        return self


class LoggerSpec(BaseModel):
    """``{name: wandb, options: {project: kd}}``: a registered logger; a bare name (``csv``) is one
    without options."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="jsonl, csv, tensorboard, wandb, mlflow (`distill.train.loggers`; plugins add more)"
    )
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _known(self) -> LoggerSpec:
        try:
            cls = LOGGERS.get(self.name)
        except UnknownNameError as err:
            raise ValueError(str(err)) from None
        check_kwargs(cls, self.options, what=f"logger {self.name!r}")
        return self


class TrainConfig(BaseModel):
    """Optimisation, schedule, precision, evaluation and checkpoint settings. Sizes are global (all ranks)."""

    # lr=.inf would poison every step
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: int = Field(10, gt=0, le=MAX_COUNT)
    max_steps: int | None = Field(
        None,
        gt=0,
        le=MAX_COUNT,
        description="run length in optimizer steps (the LR schedule spans them) if fewer than epochs give",
    )
    batch_size: int = Field(
        128, gt=0, le=MAX_COUNT, description="global batch size, split across ranks"
    )
    eval_batch_size: int = Field(512, gt=0, le=MAX_COUNT)
    group_by_length: bool = Field(
        False,
        description="put items of similar length in the same training batch (text: far less "
        "padding, so faster steps); needs a dataset with lengths()",
    )
    optimizer: OptimizerName = Field(
        "sgd",
        description="torch.optim optimizer: sgd, adamw, adam, nadam, radam, adamax, rmsprop, adagrad "
        "(adam, nadam, radam, adamax: weight decay is L2; adamw: decoupled)",
    )
    lr: float = Field(0.05, gt=0, le=MAX_LR)
    momentum: float = Field(
        0.9, ge=0, lt=1, description="SGD's and RMSprop's momentum; the Adam family's beta1"
    )
    nesterov: bool = Field(True, description="SGD only: Nesterov momentum")
    beta2: float = Field(0.999, ge=0, lt=1, description="the Adam family's beta2")
    eps: float | None = Field(
        None, gt=0, description="the optimizer's epsilon (default: torch's for that optimizer)"
    )
    weight_decay: float = Field(5e-4, ge=0)
    param_groups: list[ParamGroupSpec] = Field(
        default_factory=list,
        description="parameters under a module at their own rate ([{prefix: student.backbone, "
        "lr_scale: 0.1}]); the schedule scales every group alike",
    )
    callbacks: list[CallbackSpec] = Field(
        default_factory=list,
        description="called at training events ([{name: early_stopping, options: {metric: top1, "
        "patience: 3}}])",
    )
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    schedule_unit: Literal["step", "epoch"] = Field(
        "step",
        description="step: the schedule runs over the steps after warm-up; epoch: its value is set once "
        "per epoch from the epoch index and warm-up rises to it (Ultralytics, torchvision)",
    )
    warmup_epochs: float = Field(0.0, ge=0)
    min_warmup_steps: int = Field(
        0,
        ge=0,
        description="warm-up lasts at least this many steps (YOLOv5 and older Ultralytics: 100)",
    )
    warmup_bias_lr: float | None = Field(
        None,
        gt=0,
        le=MAX_LR,
        description="biases start warm-up at this learning rate and fall to the schedule's "
        "(Ultralytics: 0.1)",
    )
    warmup_momentum: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="momentum (AdamW: beta1) starts warm-up here and rises to momentum "
        "(Ultralytics, SGD: 0.8)",
    )
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm")
    grad_accum_steps: int = Field(
        1,
        ge=1,
        le=MAX_COUNT,
        description="split each optimizer step's batch (batch_size, global) into this many "
        "micro-batches run one after another, gradients summed: the memory of a smaller batch",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="autocast of the forward pass: bf16, or fp16 with a gradient scaler (weights "
        "and optimizer stay float32)",
    )
    bf16: bool = Field(False, description="the same as precision: bf16 (kept for older recipes)")
    tf32: bool = Field(
        False,
        description="TensorFloat-32 matmuls and convolutions (CUDA only; no effect elsewhere)",
    )
    channels_last: bool = Field(
        False,
        description="student, teacher and 4-D image batches in channels_last memory format "
        "(faster convolutions on recent GPUs)",
    )
    teacher_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="keep the frozen teacher's weights in this dtype (half the memory); its outputs "
        "are cast back to float32 before the losses",
    )
    compile: bool = Field(
        False, description="torch.compile the student and the teacher (in place; taps still work)"
    )
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
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="under torchrun: ddp (each rank holds the whole student) or fsdp (FSDP2 "
        "fully_shard: the student, its optimizer state and the teacher sharded over the ranks; "
        "checkpoints with torch.distributed.checkpoint); in one process neither (fsdp prints a note)",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seeds torch, numpy and random")
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
    tensorboard: bool = Field(
        False, description="also log to TensorBoard (as loggers: [..., tensorboard])"
    )
    loggers: list[LoggerSpec] = Field(
        default_factory=lambda: [LoggerSpec(name=n) for n in DEFAULT_LOGGERS],
        description="where metrics go, rank 0 only: jsonl (metrics.jsonl), csv (metrics.csv), "
        "tensorboard, wandb, mlflow; an entry with options is {name: wandb, options: {project: kd}}",
    )

    @property
    def amp(self) -> Literal["fp32", "bf16", "fp16"]:
        """The autocast in effect: ``precision``, or bf16 where the older ``bf16: true`` asks for it."""
        return "bf16" if self.bf16 else self.precision

    @field_validator("loggers")
    @classmethod
    def _distinct_loggers(cls, loggers: list[LoggerSpec]) -> list[LoggerSpec]:
        names = [spec.name for spec in loggers]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"loggers name {name!r} twice; list each logger once")
        return loggers

    @field_validator("param_groups")
    @classmethod
    def _distinct_prefixes(cls, groups: list[ParamGroupSpec]) -> list[ParamGroupSpec]:
        prefixes = [g.prefix for g in groups]
        for prefix in prefixes:
            if prefixes.count(prefix) > 1:
                raise ValueError(
                    f"param_groups name prefix {prefix!r} twice; give each module one group"
                )
        return groups

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.bf16 and self.precision == "fp16":
            raise ValueError(
                "bf16: true and precision: fp16 ask for two autocasts; drop bf16 (precision: fp16) or "
                "set precision: bf16"
            )
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"batch_size {self.batch_size} does not split into grad_accum_steps="
                f"{self.grad_accum_steps} micro-batches; use a batch_size that is a multiple of it"
            )
        fields = type(self).model_fields
        unused = {  # a non-default setting the optimizer would ignore
            "nesterov": self.optimizer != "sgd",
            "beta2": self.optimizer not in ADAM_FAMILY,
            "eps": self.optimizer == "sgd",
            "momentum": self.optimizer == "adagrad",
            "warmup_momentum": self.optimizer == "adagrad",
        }
        for key, ignored in unused.items():
            if ignored and getattr(self, key) != fields[key].default:
                raise ValueError(
                    f"{key}={getattr(self, key)} does not apply to optimizer {self.optimizer!r}; "
                    f"drop it or pick an optimizer that uses it"
                )
        for group in self.param_groups:
            if self.lr * group.lr_scale > MAX_LR:
                raise ValueError(
                    f"param_groups {group.prefix!r}: lr {self.lr} x lr_scale {group.lr_scale} is over "
                    f"{MAX_LR}; use a smaller lr_scale"
                )
        if self.distributed == "fsdp" and self.ema is not None:
            raise ValueError(
                "ema keeps a whole copy of the student, which distributed: fsdp shards; drop ema or "
                "use distributed: ddp"
            )
        if self.schedule == "onecycle" and self.schedule_unit == "epoch":
            raise ValueError(
                "schedule_unit 'epoch' does not apply to schedule 'onecycle' (a per-step schedule); "
                "use schedule: cosine or schedule_unit: step"
            )
        if self.warmup_epochs == 0:
            shaping = {
                "min_warmup_steps": self.min_warmup_steps or None,
                "warmup_bias_lr": self.warmup_bias_lr,
                "warmup_momentum": self.warmup_momentum,
            }
            given = [f"{k}={v}" for k, v in shaping.items() if v is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} shape the warm-up, but warmup_epochs is 0 (no warm-up); "
                    "set warmup_epochs (e.g. 1.0) or drop them"
                )
        return self
