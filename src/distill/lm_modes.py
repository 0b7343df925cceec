"""Where a language-model step's tokens come from (recipe ``distill.data_mode``), chosen per step and
logged: the one place that knows the data modes, a :class:`~distill.distiller.TeacherSource` that
replaces the batch (:meth:`~distill.distiller.TeacherSource.batch`), so the trainer and the distiller
have no mode logic.

* ``teacher_forced``: the dataset's text; the teacher's outputs come from the inner source (online, or
  the top-k cache of :mod:`distill.topk`: the ``cached`` mode).
* ``on_policy``: with probability ``lam`` a step trains on the student's own samples (GKD, Agarwal et
  al. 2024; MiniLLM, Gu et al. 2024): each row's first ``prompt_tokens`` tokens are the prompt, the
  student samples the rest of the row with its own KV cache at ``temperature`` (the sampling temperature;
  a loss's temperature is its own), and the teacher scores every token of the sample. The targets are
  the terms' ``labels``: the sampled tokens after the prompt (reverse KL, JSD, sampled-token reverse
  KL read them). The task's targets of a sample are all ``-100``: the task loss (and its top-1) count
  dataset text only, never the student's own samples.
* ``replay``: DistiLLM's off-policy reuse (Ko et al. 2024): on a student-sample step, once the buffer
  holds a batch, a share ``replay_ratio`` of the steps reuses earlier samples from a buffer of
  ``replay_size`` instead of generating.
* ``seq_kd``: sequence-level KD (Kim & Rush 2016): the teacher completes every training row's prompt
  once, in index order, when the trainer prepares (kept in memory, so a run samples each completion
  once), and the student trains on the completions: they are the task's targets and the terms' labels.
  With a teacher of another tokenizer (paired data, :mod:`distill.data.lm_pair`) the prompt goes over as
  text (:mod:`distill.data.lm_retokenize`): decoded, encoded for the teacher, which samples its own
  tokens; its continuation is decoded and encoded for the student after the student's prompt ids
  (right-padded, masked, when short). The rows of the whole training set whose prompts give the
  teacher as many tokens sample together, so every prompt is whole. The student learns from the task loss only: terms are refused (the teacher's tokens are
  not the student's).

The choice is a function of ``(seed, step)`` only, the same on every rank, and sampling runs under the
step's seeded RNG, so a resumed run makes the same choices and samples; ``replay``'s buffer is saved
in every checkpoint (:meth:`DataModes.state_tensors`) and ``seq_kd``'s completions are sampled again,
the same, by a resumed run (seeded, in index order). Logged per step: ``mode_<name>`` (1 for the mode
taken; averaged over a logging window, the share of steps) and ``generate_s`` (seconds spent sampling; the
trainer logs ``train_s``, the rest of the step, and ``step_s``, the whole step, beside it, and sums
both in ``summary.json``'s ``time``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from distill.data.base import make_loader
from distill.data.lm_retokenize import (
    check_text_tokenizers,
    student_row,
    teacher_budget,
    teacher_prompts,
)
from distill.distiller import OnlineTeacher, TeacherSource
from distill.errors import DistillError
from distill.tasks.base import Batch, Task

MODES = ("teacher_forced", "on_policy", "replay", "seq_kd")
IGNORE = -100


@dataclass(frozen=True)
class ModeSettings:
    """``distill.data_mode`` (see the module docstring for each field's role)."""

    mode: str = "on_policy"
    lam: float = 1.0
    prompt_tokens: int = 8
    temperature: float = 1.0
    replay_size: int = 256
    replay_ratio: float = 0.5
    seed: int = 0


def sample_tokens(
    model: nn.Module, prompt: torch.Tensor, new_tokens: int, temperature: float
) -> torch.Tensor:
    """``(B, P + new_tokens)`` ids: ``prompt`` continued by sampling from ``model`` (in eval mode, no
    grad) with its KV cache: Hugging Face ``generate`` (exactly ``new_tokens``, no top-k/top-p), or the
    model's own ``generate(ids, max_new_tokens, temperature)`` (distill's ``gpt``)."""
    generate = getattr(model, "generate", None)
    if not callable(generate):
        raise DistillError(
            f"the data mode samples from {type(model).__name__}, which has no generate(); use distill's "
            "gpt or a Hugging Face causal LM"
        )
    was_training = model.training
    model.eval()
    # FSDP2 (train.distributed: fsdp): gather the whole model first, as generate() may call submodules
    # without the hooks that gather them (a KV-cache step); every rank samples at the same step
    units = _fsdp_units(model)
    for unit in units:
        unit.unshard()
    try:
        with torch.no_grad():
            if getattr(model, "config", None) is not None and hasattr(model, "generation_config"):
                out = generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    top_p=1.0,
                    use_cache=True,
                    pad_token_id=0,
                )
            else:
                out = generate(prompt, max_new_tokens=new_tokens, temperature=temperature)
    finally:
        for unit in units:
            unit.reshard()
        model.train(was_training)
    return out[:, : prompt.shape[1] + new_tokens]


def _fsdp_units(model: nn.Module) -> list[Any]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


class DataModes(TeacherSource):
    """Chooses each step's tokens (:data:`MODES`); ``inner`` answers for dataset text (online or cached),
    ``teacher`` scores and writes generated text."""

    def __init__(
        self, inner: TeacherSource, teacher: nn.Module | None, task: Task, settings: ModeSettings
    ) -> None:
        if settings.mode not in MODES:
            raise DistillError(f"data mode {settings.mode!r} is not one of {', '.join(MODES)}")
        if teacher is None and settings.mode != "teacher_forced":
            raise DistillError(
                f"data mode {settings.mode} needs the teacher to score or write text; give a teacher"
            )
        self.inner = inner
        self.scorer = OnlineTeacher(teacher, task) if teacher is not None else None
        self.task = task
        self.settings = settings
        self.buffer: list[torch.Tensor] = []  # replay: sampled rows (L,), newest last
        self.completions: dict[int, torch.Tensor] = {}  # seq_kd: the teacher's row per sample index
        # seq_kd with a teacher of another tokenizer: (student, teacher) tokenizers, from the data
        self.tokenizers: tuple[Any, Any] | None = None
        self._generated: Batch | None = None

    def choose(self, step: int) -> str:
        """``dataset``, ``student``, ``replay`` or ``teacher``: a function of (seed, step) and the
        buffer's fill, the same on every rank."""
        s = self.settings
        if s.mode == "teacher_forced":
            return "dataset"
        if s.mode == "seq_kd":
            return "teacher"
        draw = random.Random(s.seed * 1_000_003 + step)
        if draw.random() >= s.lam:
            return "dataset"
        if s.mode == "replay" and self.buffer and draw.random() < s.replay_ratio:
            return "replay"
        return "student"

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """``replay``'s buffer: its rows end to end (``buffer``, int64) and their lengths
        (``buffer_lengths``), oldest first; nothing for the other modes."""
        if not self.buffer:
            return {}
        lengths = torch.tensor([len(row) for row in self.buffer], dtype=torch.int64)
        return {"buffer": torch.cat(self.buffer).long(), "buffer_lengths": lengths}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.buffer = []
        if "buffer" in tensors:
            lengths = tensors["buffer_lengths"].tolist()
            self.buffer = [row.clone() for row in tensors["buffer"].split(lengths)]

    def evaluation_teacher(self, teacher: nn.Module | None) -> nn.Module | None:
        if self.settings.mode == "teacher_forced":  # the inner source decides (the top-k cache)
            return self.inner.evaluation_teacher(teacher)
        return teacher  # generating modes always load the teacher

    def prepare(self, train_data: Any, batch_size: int, console: Any, is_main: bool) -> None:
        self.inner.prepare(train_data, batch_size, console, is_main)
        if self.settings.mode == "seq_kd" and not self.completions:
            self._write_completions(train_data, batch_size, console if is_main else None)

    @torch.no_grad()
    def _write_completions(self, data: Any, batch_size: int, console: Any) -> None:
        dataset = data.dataset if isinstance(data, DataLoader) else data
        if getattr(dataset, "teacher_tokenizer", None) is not None:
            check_text_tokenizers(dataset.tokenizer, dataset.teacher_tokenizer)
            self.tokenizers = (dataset.tokenizer, dataset.teacher_tokenizer)
        if console is not None:
            console.print(f"seq_kd: the teacher completes {len(dataset):,} training rows")
        assert self.scorer is not None  # __init__: seq_kd has a teacher
        teacher = self.scorer.teacher
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.settings.seed)
            prompts, index, new = [], [], 0
            for raw in make_loader(dataset, batch_size, None):
                batch = self.task.split(raw).to(_device(teacher))
                if self.tokenizers is None:
                    rows = self._sample(teacher, batch)
                    for i, row in zip(_index(batch).tolist(), rows.cpu(), strict=True):
                        self.completions[i] = row
                    continue
                prompt, new = self._prompt(batch)
                prompts.append(prompt.cpu())
                index += _index(batch).tolist()
            if self.tokenizers is not None:
                rows = self._retokenized(teacher, torch.cat(prompts), new, batch_size)
                self.completions.update(zip(index, rows, strict=True))

    def _retokenized(
        self, teacher: nn.Module, prompts: torch.Tensor, new: int, batch_size: int
    ) -> list[torch.Tensor]:
        """Student rows ``(P + new,)`` for ``prompts`` (N, P): each prompt, then the teacher's
        continuation of its text in the student's tokens (``-100`` past a short one). The prompts that
        give the teacher as many tokens sample together, ``batch_size`` at a time, shortest first."""
        assert self.tokenizers is not None
        student_tok, teacher_tok = self.tokenizers
        encoded = teacher_prompts(student_tok, teacher_tok, prompts)
        budget = teacher_budget(encoded, prompts.shape[1], new)
        order = sorted(range(len(encoded)), key=lambda k: (len(encoded[k]), k))
        groups = [
            [k for k in order if len(encoded[k]) == n] for n in sorted(set(map(len, encoded)))
        ]
        rows: list[torch.Tensor] = [torch.empty(0)] * len(encoded)
        for group in groups:
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                ids = torch.tensor([encoded[k] for k in chunk], device=_device(teacher))
                out = sample_tokens(teacher, ids, budget, self.settings.temperature)
                for k, generated in zip(chunk, out[:, ids.shape[1] :].cpu(), strict=True):
                    text = teacher_tok.decode(generated.tolist())
                    rows[k] = student_row(
                        student_tok, prompts[k].tolist(), text, prompts.shape[1] + new
                    )
        return rows

    def batch(self, batch: Batch, student: nn.Module, step: int) -> tuple[Batch, dict[str, float]]:
        choice = self.choose(step)
        started = time.perf_counter()
        if choice == "dataset":
            rows = None
        elif choice == "teacher":
            rows = self._completions(batch)
        elif choice == "replay":
            rows = self._replayed(len(batch), step)
        else:
            rows = self._sample(student, batch)
            self._remember(rows)
        spent = time.perf_counter() - started if choice == "student" else 0.0
        metrics = {f"mode_{m}": float(m == choice) for m in self._choices()}
        metrics["generate_s"] = spent
        if rows is None:
            self._generated = None
            return batch, metrics
        # the task loss reads the data's targets: a student's sample has none (its tokens are the
        # terms' labels), the teacher's completions are seq_kd's targets
        self._generated = self._as_batch(rows, batch, with_targets=choice == "teacher")
        return self._generated, metrics

    def _choices(self) -> tuple[str, ...]:
        return {
            "teacher_forced": ("dataset",),
            "on_policy": ("dataset", "student"),
            "replay": ("dataset", "student", "replay"),
            "seq_kd": ("teacher",),
        }[self.settings.mode]

    def outputs(self, batch: Batch, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        if self._generated is not None and batch is self._generated:
            assert self.scorer is not None  # __init__: every generating mode has a teacher
            if self.tokenizers is not None:
                raise DistillError(
                    "seq_kd with a teacher of another tokenizer trains on the task loss only (the "
                    "teacher cannot score the student's tokens); remove distill.terms"
                )
            return self.scorer.outputs(batch, taps)  # every token of a sample, scored online
        return self.inner.outputs(batch, taps)

    def _prompt(self, batch: Batch) -> tuple[torch.Tensor, int]:
        inputs = batch.inputs
        ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs
        length, prompt = ids.shape[1] + 1, self.settings.prompt_tokens  # the rows before the shift
        if not 1 <= prompt < length:
            raise DistillError(
                f"distill.data_mode.prompt_tokens {prompt} leaves nothing to sample in rows of "
                f"{length} tokens; use 1..{length - 1}"
            )
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        if mask is not None and not bool(mask[:, :prompt].all()):
            raise DistillError(
                "distill.data_mode: some rows are padding inside the prompt; use rows of at least "
                f"prompt_tokens={prompt} tokens"
            )
        return ids[:, :prompt], length - prompt

    def _sample(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        prompt, new = self._prompt(batch)
        return sample_tokens(model, prompt, new, self.settings.temperature)

    def _remember(self, rows: torch.Tensor) -> None:
        if self.settings.mode != "replay":
            return
        self.buffer.extend(rows.detach().cpu())
        del self.buffer[: max(0, len(self.buffer) - self.settings.replay_size)]

    def _replayed(self, count: int, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + step)
        picks = torch.randint(0, len(self.buffer), (count,), generator=g)
        return torch.stack([self.buffer[int(i)] for i in picks])

    def _completions(self, batch: Batch) -> torch.Tensor:
        index = _index(batch).tolist()
        missing = [i for i in index if i not in self.completions]
        if missing:
            raise DistillError(
                f"seq_kd has no teacher completion for samples {missing[:5]}; the trainer writes them "
                "when it prepares (call source.prepare with the training data)"
            )
        return torch.stack([self.completions[i] for i in index])

    def _as_batch(self, rows: torch.Tensor, like: Batch, with_targets: bool) -> Batch:
        """The task's own batch for ``rows`` (B, L): ``labels`` (the terms' extra) are the rows with the
        prompt left out; the task's ``targets`` too ``with_targets``, else all ``-100``."""
        labels = rows.clone()
        labels[:, : self.settings.prompt_tokens] = IGNORE
        raw: dict[str, torch.Tensor] = {"input_ids": rows, "labels": labels}
        padded = rows == IGNORE  # seq_kd across tokenizers: a short continuation, right-padded
        if bool(padded.any()):
            raw["input_ids"] = rows.masked_fill(padded, 0)
            raw["attention_mask"] = (~padded).long()
        if "index" in like.extras:
            raw["index"] = like.extras["index"]
        batch = self.task.split(raw).to(like.targets.device)
        if not with_targets:
            batch.targets = torch.full_like(batch.targets, IGNORE)
        return batch


def _index(batch: Batch) -> torch.Tensor:
    index = batch.extras.get("index")
    if not isinstance(index, torch.Tensor):
        raise DistillError(
            "seq_kd keeps one teacher completion per training sample and needs batches with "
            "'index'; use a distill dataset"
        )
    return index.cpu().long()


def _device(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
