"""A small dependency-free GPT (decoder-only transformer) for causal language modelling.

Pre-LN blocks (Radford et al. 2019, GPT-2; the layout of Karpathy's nanoGPT): ``x + attn(ln_1(x))`` then
``x + mlp(ln_2(x))``, causal self-attention through ``torch.nn.functional.scaled_dot_product_attention``,
learned positions, a final LayerNorm and an output head tied to the token embedding (optional). Blocks are
``blocks.0 .. blocks.{L-1}``, so module taps reach them by name.

``forward(input_ids, attention_mask=None, output_hidden_states=False)`` returns logits ``(B, T, V)``
(and the tuple of hidden states, embedding output first, when asked). Padding goes on the right: causal
attention never lets a real position see a later padded one, so ``attention_mask`` is accepted and not
needed. :meth:`GPT.generate` samples with a key/value cache.

The registry's factories take the vocabulary size as ``num_classes`` (the dataset's ``num_classes``):
``gpt`` (every size option), ``gpt_teacher`` (4 x 128, about 0.8 M parameters for 84 symbols) and
``gpt_student`` (1 x 64, about 64 k). :func:`gpt_from_teacher` cuts a student from a teacher's blocks.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.models import MODELS, check_dropout, check_option, is_positive_int

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x`` (B, t, C) at positions ``P .. P+t-1`` after the ``P`` cached ones in ``past``
        ((B, heads, P, d) keys and values); returns the output and the keys/values of all ``P + t``."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        drop = self.dropout if self.training else 0.0
        if past is None:  # positions 0 .. t-1: the plain causal mask (what an ONNX export traces)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            start = k.shape[2] - t
            # query i sits at position start + i: it sees keys 0 .. start + i
            mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_drop(self.proj(y)), (k, v)


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, C) -> (B, T, C): what a module tap on ``blocks.N`` captures."""
        return self.step(x, None)[0]

    def step(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The block after ``past``'s cached positions; also returns the grown keys/values."""
        attended, present = self.attn(self.ln_1(x), past)
        x = x + attended
        return x + self.mlp(self.ln_2(x)), present


class GPT(nn.Module):
    """Token and position embeddings, ``n_layer`` pre-LN blocks, final LayerNorm, linear head."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        tie_embeddings: bool = True,
    ) -> None:
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(_init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * max(n_layer, 1)))
        if tie_embeddings:
            self.head.weight = self.tok_emb.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Logits ``(B, T, V)`` of ``input_ids`` ``(B, T)``, ``T <= block_size``; with
        ``output_hidden_states`` also ``(embeddings, block 1 output, ..., block L output)``."""
        x = self._embed(input_ids, 0)
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        logits = self.head(self.ln_f(x))
        return (logits, tuple(states)) if output_hidden_states else logits

    def _embed(self, input_ids: torch.Tensor, start: int) -> torch.Tensor:
        t = input_ids.shape[1]
        if start + t > self.block_size:
            raise DistillError(
                f"gpt: a sequence of {start + t} tokens is longer than block_size={self.block_size}; "
                f"use blocks of at most {self.block_size} tokens or build the model with a larger block_size"
            )
        positions = torch.arange(start, start + t, device=input_ids.device)
        return self.drop(self.tok_emb(input_ids) + self.pos_emb(positions))

    def step(self, input_ids: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        """Logits of the last position of ``input_ids`` (B, t), which follow the ``cache``'s tokens,
        and the cache grown by them."""
        start = cache[0][0].shape[2] if cache else 0
        x = self._embed(input_ids, start)
        present: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block.step(x, cache[i] if cache else None)
            present.append(kv)
        return self.head(self.ln_f(x[:, -1])), present

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``idx`` (B, t) followed by ``max_new_tokens`` sampled tokens. ``temperature=0`` is greedy;
        ``top_k`` keeps the k most likely tokens. The context is the last ``block_size`` tokens; the
        key/value cache gives the same tokens as recomputing (once the context is full, it is rebuilt
        from the window each step)."""
        cache: KVCache | None = None
        for _ in range(max_new_tokens):
            window = idx[:, -self.block_size :]
            if not use_cache or cache is None or cache[0][0].shape[2] >= self.block_size:
                logits, cache = self.step(window, None)
            else:
                logits, cache = self.step(idx[:, -1:], cache)
            if not use_cache:
                cache = None
            idx = torch.cat([idx, sample(logits, temperature, top_k, generator)], dim=1)
        return idx


def sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row ``(B, 1)`` from logits ``(B, V)``: argmax at ``temperature`` 0, else a draw
    from ``softmax(logits / temperature)`` restricted to the ``top_k`` largest."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


@MODELS.register(
    "gpt",
    family="gpt",
    description="decoder-only transformer; num_classes = vocabulary size; options: block_size, "
    "n_layer, n_head, n_embd, dropout, tie_embeddings, pad_vocab",
)
def gpt(
    num_classes: int = 84,
    in_channels: int = 1,
    block_size: int = 128,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    dropout: float = 0.0,
    tie_embeddings: bool = True,
    pad_vocab: int = 0,
) -> GPT:
    """A GPT over a vocabulary of ``num_classes`` tokens (``in_channels`` is unused); ``pad_vocab`` extra
    embedding and head rows past the tokenizer's length, as in models whose head is padded to a round
    size (no token ever takes them; distillation slices them off, docs/lm_losses.md)."""
    check_option(
        isinstance(pad_vocab, int) and not isinstance(pad_vocab, bool) and pad_vocab >= 0,
        "gpt",
        "pad_vocab",
        pad_vocab,
        "an int >= 0",
    )
    for option, value in (("block_size", block_size), ("n_layer", n_layer), ("n_head", n_head)):
        check_option(is_positive_int(value), "gpt", option, value, "an int >= 1")
    ok = is_positive_int(n_embd) and n_embd % n_head == 0
    check_option(ok, "gpt", "n_embd", n_embd, f"a positive multiple of n_head={n_head}")
    check_dropout("gpt", dropout)
    return GPT(
        num_classes + pad_vocab, block_size, n_layer, n_head, n_embd, dropout, bool(tie_embeddings)
    )


@MODELS.register("gpt_teacher", family="gpt", description="gpt 4 layers x 128, ~0.8 M parameters")
def gpt_teacher(
    num_classes: int = 84, in_channels: int = 1, block_size: int = 128, dropout: float = 0.0
) -> GPT:
    return gpt(num_classes, in_channels, block_size, 4, 4, 128, dropout)


@MODELS.register("gpt_student", family="gpt", description="gpt 1 layer x 64, ~64 k parameters")
def gpt_student(
    num_classes: int = 84, in_channels: int = 1, block_size: int = 128, dropout: float = 0.0
) -> GPT:
    return gpt(num_classes, in_channels, block_size, 1, 4, 64, dropout)


def gpt_from_teacher(
    teacher: nn.Module,
    layers: list[int] | None = None,
    uniform: int | None = None,
    hidden_size: int | None = None,
) -> GPT:
    """A student of a gpt ``teacher``: depth only (``layers=[0, 3]`` or ``uniform=2``, every (L/k)-th
    block from block 0), a copy keeping the teacher's current embeddings, chosen blocks, final norm and
    head; with ``hidden_size`` a new, randomly initialised gpt of that width (heads of the teacher's head
    size) and as many blocks."""
    from distill.models.hf import pick_layers

    if not isinstance(teacher, GPT):
        raise DistillError(
            f"gpt_from_teacher needs a gpt teacher, got {type(teacher).__name__}; use an hf: teacher "
            "with from_teacher, or build the student yourself"
        )
    keep = pick_layers(len(teacher.blocks), layers, uniform)
    if hidden_size is not None:
        attn = teacher.blocks[0].attn if len(teacher.blocks) else None
        head_size = teacher.tok_emb.embedding_dim // attn.n_head if attn else 1
        ok = is_positive_int(hidden_size) and hidden_size % head_size == 0
        check_option(ok, "from_teacher", "hidden_size", hidden_size, f"a multiple of {head_size}")
        tied = teacher.head.weight is teacher.tok_emb.weight
        return GPT(teacher.vocab_size, teacher.block_size, len(keep), hidden_size // head_size,
                   hidden_size, 0.0, tied)  # fmt: skip
    student = copy.deepcopy(teacher)
    student.blocks = nn.ModuleList(student.blocks[i] for i in keep)
    return student
