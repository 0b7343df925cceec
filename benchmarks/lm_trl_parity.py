"""distill next to TRL's ``GKDTrainer`` (``trl.experimental.gkd``), the part of ``benchmarks/lm_trl.py``
that needs ``trl`` (``pip install trl``; never a dependency of distill).

One tiny Llama-config teacher and student (``transformers.LlamaConfig``, random weights, no download),
the same batches (prompt positions and right padding at ``-100``), the same threads. For beta in
{0, 0.5, 1} at lambda = 0 (teacher-forced data): TRL's first-step loss (``GKDTrainer.compute_loss``) and
student gradients against distill's (``generalized_jsd`` term, task weight 0); then ``STEPS`` training
steps of each trainer (AdamW, constant learning rate, clipping at 1), timed from the end of step 2 to the
end of the last, as training tokens per second, with the process's peak RSS.

The causal-LM task here is a stand-in (the benchmark's own, same shift as the ``causal_lm`` task:
row ``j`` of the logits predicts token ``j + 1``), so this file runs before that task exists.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

# a Llama-2-sized vocabulary by default; LM_TRL_VOCAB=320 gives a pair whose cost is the models, not the loss
VOCAB = int(os.environ.get("LM_TRL_VOCAB", "32000"))
LENGTH, BATCH, STEPS, PROMPT = 64, 8, 12, 8


def models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(hidden: int, layers: int, heads: int, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=2 * LENGTH,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            attn_implementation="sdpa",
            initializer_range=0.2,  # peaked distributions: a divergence far from 0
        )
        return LlamaForCausalLM(config).float()

    return build(96, 2, 4, seed + 1), build(48, 1, 2, seed + 2)


def batches(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Token rows with a masked prompt and right padding of varied length (labels -100 there)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(3, VOCAB, (BATCH, LENGTH), generator=g)
        lengths = torch.randint(LENGTH // 2, LENGTH + 1, (BATCH,), generator=g)
        mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
        ids = ids.masked_fill(mask == 0, 0)
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :PROMPT] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def lm_task():
    from distill.tasks.base import Batch, Task

    class CausalLMTask(Task):
        name = "bench_causal_lm"

        def split(self, batch) -> Batch:
            if isinstance(batch, (list, tuple)):
                batch = dict(zip(("input_ids", "attention_mask", "labels"), batch, strict=True))
            inputs = {
                "input_ids": batch["input_ids"][:, :-1],
                "attention_mask": batch["attention_mask"][:, :-1],
            }
            labels = batch["labels"][:, 1:]
            return Batch(inputs, labels, {"labels": labels})

        def forward(self, model, inputs):
            return {"logits": model(**inputs).logits}

        def loss(self, outputs, batch):
            logits = outputs["logits"]
            return nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                batch.targets.reshape(-1),
                ignore_index=-100,
            )

        def batch_metrics(self, outputs, batch):
            return {}

        def count_items(self, batch):
            return int((batch.targets != -100).sum())

    return CausalLMTask()


def distiller(teacher: nn.Module, student: nn.Module, beta: float):
    from distill import Distiller, Term
    from distill.losses import build_loss

    return Distiller(
        student,
        lm_task(),
        teacher=teacher,
        terms=[Term(build_loss("generalized_jsd", beta=beta))],
        task_weight=0.0,
    )


def tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(WordLevel(vocab, unk_token="t3"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="t0", bos_token="t1", eos_token="t2"
    )


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {
        k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels")
    }


def gkd_trainer(
    teacher: nn.Module, student: nn.Module, beta: float, data: list[dict], out: str, steps: int
):
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    rows = {
        k: torch.cat([b[k] for b in data]).tolist()
        for k in ("input_ids", "attention_mask", "labels")
    }
    args = GKDConfig(
        output_dir=out,
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lmbda=0.0,
        beta=beta,
        temperature=1.0,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=10_000,
        disable_dropout=True,
        bf16=False,  # TRL defaults to bf16 autocast; both sides in float32 here
        seed=0,
        dataloader_num_workers=0,
        optim="adamw_torch",
        max_length=LENGTH,
    )
    return GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        data_collator=collate,
        train_dataset=Dataset.from_dict(rows),
        processing_class=tokenizer(),
    )


def flat_grad(model: nn.Module) -> torch.Tensor:
    """All parameter gradients as one float64 vector (float32 sums over millions of entries drift)."""
    return torch.cat(
        [p.grad.reshape(-1).double() for p in model.parameters() if p.grad is not None]
    )


def parity(beta: float) -> dict:
    """First-step loss and gradients of TRL's compute_loss and distill's Distiller on one batch."""
    teacher, student = models()
    batch = batches(1)[0]
    trl_student = copy.deepcopy(student)
    with tempfile.TemporaryDirectory() as out:
        trainer = gkd_trainer(copy.deepcopy(teacher), trl_student, beta, batches(2), out, 1)
        trainer.model.train()
        trl_loss = trainer.compute_loss(trainer.model, dict(batch))
        trl_loss.backward()
    ours = distiller(teacher, student, beta)
    ours.train()
    step = ours(ours.task.split(batch), epoch=0.0)
    step.loss.backward()
    g_trl, g_ours = flat_grad(trl_student), flat_grad(student)
    cosine = torch.nn.functional.cosine_similarity(g_trl, g_ours, dim=0)
    rel = abs(float(step.loss) - float(trl_loss)) / abs(float(trl_loss))
    return {
        "beta": beta,
        "trl_loss": float(trl_loss),
        "distill_loss": float(step.loss),
        "rel_diff": rel,
        "grad_cosine": float(cosine),
    }


class _Clock:
    def __init__(self) -> None:
        self.marks: list[float] = []


def throughput(which: str, beta: float) -> dict:
    """Training tokens/s (input tokens of steps 3..STEPS) and the process's peak RSS (MiB)."""
    import resource

    teacher, student = models()
    data = batches(STEPS)
    clock = _Clock()
    if which == "trl":
        from transformers import TrainerCallback

        class Mark(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.marks.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as out:
            trainer = gkd_trainer(teacher, student, beta, data, out, STEPS)
            trainer.add_callback(Mark())
            trainer.train()
    else:
        import io

        from rich.console import Console
        from torch.utils.data import TensorDataset

        from distill import TrainConfig, Trainer
        from distill.train.callbacks import Callback

        class Mark(Callback):
            def on_step_end(self, trainer, step, metrics):
                clock.marks.append(time.perf_counter())

        dataset = TensorDataset(
            *(torch.cat([b[k] for b in data]) for k in ("input_ids", "attention_mask", "labels"))
        )
        config = TrainConfig(
            epochs=1,
            batch_size=BATCH,
            lr=1e-3,
            optimizer="adamw",
            weight_decay=0.0,
            grad_clip=1.0,
            schedule="constant",
            warmup_epochs=0.0,
            progress=False,
            device="cpu",
            seed=0,
            max_steps=STEPS,
        )
        trainer = Trainer(
            distiller(teacher, student, beta),
            dataset,
            None,
            config,
            console=Console(file=io.StringIO()),
            callbacks=[Mark()],
        )
        trainer.fit()
    seconds = clock.marks[-1] - clock.marks[1]
    tokens = BATCH * LENGTH * (len(clock.marks) - 2)
    return {
        "tokens_per_s": tokens / seconds,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steps": len(clock.marks),
    }


def trl_child(kind: str, beta: str, *_: str) -> dict:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if kind == "parity":
        return parity(float(beta))
    return throughput(kind, float(beta))


def bench_trl(repeats: int, run_child: Callable[[list[str]], dict], speed_too: bool = True) -> dict:
    """Parity at beta 0, 0.5, 1 and throughput (beta 0.5; ``speed_too``) at both vocabularies; the keys
    are the Llama-2-sized one's, the 320-entry one is reported beside them."""
    results: dict = {}
    for vocab in ("32000", "320"):
        os.environ["LM_TRL_VOCAB"] = vocab  # the children inherit it
        rows = [run_child(["trl", "parity", str(beta)]) for beta in (0.0, 0.5, 1.0)]
        for row in rows:
            print(vocab, row, flush=True)
        suffix = "" if vocab == "32000" else f"_vocab{vocab}"
        results[f"trl_loss_max_rel_diff{suffix}"] = max(r["rel_diff"] for r in rows)
        results[f"trl_grad_min_cosine{suffix}"] = min(r["grad_cosine"] for r in rows)
        results[f"_trl_parity_vocab{vocab}"] = rows
        if not speed_too:
            continue
        speed: dict[str, list[dict]] = {"trl": [], "distill": []}
        for _ in range(repeats):
            for which in ("trl", "distill"):
                speed[which].append(run_child(["trl", which, "0.5"]))
                print(vocab, which, speed[which][-1], flush=True)
        pairs = list(zip(speed["trl"], speed["distill"], strict=True))
        ratios = [d["tokens_per_s"] / t["tokens_per_s"] for t, d in pairs]
        memory = [d["peak_mib"] / t["peak_mib"] for t, d in pairs]
        results[f"trl_throughput_ratio{suffix}"] = round(statistics.mean(ratios), 4)
        results[f"trl_peak_memory_ratio{suffix}"] = round(statistics.mean(memory), 4)
        results[f"_trl_speed_vocab{vocab}"] = {
            "throughput": speed,
            "ratios": ratios,
            "memory_ratios": memory,
        }
    os.environ.pop("LM_TRL_VOCAB", None)
    return results
