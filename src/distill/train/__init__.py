"""Training: a readable loop, checkpoints, metrics logging and distributed set-up."""

from distill.train.checkpoint import load_checkpoint, load_student_weights, save_checkpoint
from distill.train.config import TrainConfig
from distill.train.trainer import Trainer

__all__ = ["Trainer", "TrainConfig", "save_checkpoint", "load_checkpoint", "load_student_weights"]
