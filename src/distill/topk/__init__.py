"""A top-k teacher cache for language models: the LM form of ``cache_teacher`` (recipe
``distill.topk_cache``).

Per token the cache keeps the teacher's top-k log-probabilities at the capture temperature ``T_c``, their
token ids and the probability mass left outside them, in safetensors shards that are memory-mapped and
read per sample (see ``docs/lm.md``, "The top-k cache format", for the layout other tools can read). Row
``j`` of a sample is the teacher's distribution for token ``j + 1`` given tokens ``0..j`` (the alignment of
the logits the task hands the losses). A ``manifest.json`` names the teacher, tokenizer and dataset
fingerprints, ``k``, the dtype and ``T_c``; a cache made for other ones, or a shard whose size or sha256
differs from its record, is refused with one line and left as it is.

:class:`TopKCache` is one more :class:`~distill.distiller.TeacherSource`: it answers the ``@logits`` tap
with dense ``(B, T, V)`` teacher logits rebuilt from the top-k (:func:`dense_logits`), so every token loss
reads it unchanged, and training from a complete cache needs no teacher at all.

Re-tempering: the logits handed out are ``T_c * log p_c``, which equal the teacher's own logits up to a
per-row constant on the top-k ids, so a loss's ``log_softmax(x / tau)`` gives the teacher's distribution
at ``tau`` there. The tail is unknown: its mass is spread evenly over the ``V - k`` other ids (each gets
``log(rest / (V - k))``). At ``tau == T_c`` this is exact on the top-k and keeps the tail's total; at
another ``tau`` the ratios among the top-k stay exact, but the tail's total is an estimate: a sharper
``tau < T_c`` underestimates it, a flatter ``tau > T_c`` overestimates it (power-mean inequality; equal
only for a flat tail).
"""

from distill.topk.source import TopKCache
from distill.topk.sparse import dense_logits, retemper, topk_of
from distill.topk.store import CacheSettings, Fingerprints

__all__ = ["CacheSettings", "Fingerprints", "TopKCache", "dense_logits", "retemper", "topk_of"]
