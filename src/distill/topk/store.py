"""The cache on disk: a manifest, fingerprints and safetensors shards (the format is in docs/lm.md).

A folder holds ``manifest.json`` and ``shard-NNNNN.safetensors`` files, each with a ``shard-NNNNN.json``
record (its samples, tokens, size and sha256) written after it. The manifest is written first (it claims
the folder for one teacher, tokenizer, dataset and settings); a shard is written whole or not at all
(:func:`~distill.io.atomic_write`), so a killed fill resumes with the shards it has; the manifest lists
every shard and says ``complete`` at the end. A process killed while writing leaves at most a
``.*.tmp`` temporary, which is never read, never makes a folder "not a cache" and is removed by the
next fill (:meth:`CacheStore.claim`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError, first_line
from distill.io import atomic_write, file_sha256, remove_stale_temporaries, write_json

FORMAT = "distill-topk-cache/1"
ALIGNMENT = "row j predicts token j+1"
DTYPES = {"float16": torch.float16, "float32": torch.float32}
MANIFEST = "manifest.json"
TENSORS = ("logprobs", "ids", "rest", "tokens", "offsets")


# ------------------------------------------------------------------------------------- fingerprints
def fingerprint_module(model: nn.Module) -> str:
    """sha256 of a model's class, parameter and buffer names, shapes, dtypes and values."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprint_json(value: Any) -> str:
    """sha256 of ``value`` as canonical JSON (a model spec, a tokenizer's vocabulary)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class CacheSettings:
    """What a cache keeps: ``k`` entries per token in ``dtype`` (``float16``/``float32``) at
    ``capture_temperature``, ``shard_samples`` samples per shard file."""

    k: int = 8
    dtype: str = "float16"
    capture_temperature: float = 1.0
    shard_samples: int = 1024


@dataclass
class Fingerprints:
    """sha256 digests that must match for a cache to be used: the teacher (weights and architecture),
    the tokenizer (its vocabulary) and the dataset (its spec and token ids)."""

    teacher: str
    tokenizer: str
    dataset: str
    names: dict[str, str] = field(default_factory=dict)  # readable labels, never compared


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _fix(path: Path) -> str:
    return f"point distill.topk_cache.dir at a new folder, or delete {path} to fill it again"


def _temporary(path: Path) -> bool:
    """A file :func:`~distill.io.atomic_write` had not renamed yet when its process was killed."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


class CacheStore:
    """One cache folder: checks it against this run's ``settings``/``fingerprints``, writes shards and
    the manifest, and verifies shard files (size and sha256) before they are read."""

    def __init__(
        self, path: str | Path, settings: CacheSettings, fingerprints: Fingerprints
    ) -> None:
        self.path = Path(path)
        self.settings = settings
        self.fingerprints = fingerprints
        self.manifest: dict[str, Any] | None = self._read_manifest()
        if self.manifest is not None:
            self._check(self.manifest)
        elif self.path.is_dir() and any(not _temporary(p) for p in self.path.iterdir()):
            raise DistillError(
                f"topk cache folder {self.path} holds files but no {MANIFEST}, so it is not a cache; "
                "point distill.topk_cache.dir at an empty or new folder"
            )

    @property
    def complete(self) -> bool:
        return bool(self.manifest and self.manifest.get("complete"))

    def _read_manifest(self) -> dict[str, Any] | None:
        file = self.path / MANIFEST
        if not file.exists():
            return None
        try:
            manifest = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise DistillError(
                f"topk cache manifest {file} cannot be read ({first_line(err)}); {_fix(self.path)}"
            ) from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DistillError(f"topk cache {file} is not a {FORMAT} manifest; {_fix(self.path)}")
        problem = _manifest_problem(manifest)
        if problem:
            raise DistillError(
                f"topk cache manifest {file} is damaged ({problem}); {_fix(self.path)}"
            )
        return manifest

    def _expected(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "alignment": ALIGNMENT,
            "settings": asdict(self.settings),
            "fingerprints": {
                "teacher": self.fingerprints.teacher,
                "tokenizer": self.fingerprints.tokenizer,
                "dataset": self.fingerprints.dataset,
            },
        }

    def _check(self, manifest: dict[str, Any]) -> None:
        """Refuse a cache made for another teacher, tokenizer, dataset or settings (one line)."""
        expected = self._expected()
        for key, value in expected["fingerprints"].items():
            had = manifest.get("fingerprints", {}).get(key)
            if had != value:
                raise DistillError(
                    f"topk cache {self.path} was filled for another {key} (fingerprint "
                    f"{str(had)[:12]}, this run's is {value[:12]}); {_fix(self.path)}"
                )
        for key, value in expected["settings"].items():
            had = manifest.get("settings", {}).get(key)
            if had != value:
                raise DistillError(
                    f"topk cache {self.path} was filled with {key}={had!r}, this run asks for "
                    f"{value!r}; set distill.topk_cache.{key}: {had!r} or {_fix(self.path)}"
                )

    def check_size(self, num_samples: int) -> None:
        """Refuse a cache of another number of training samples."""
        had = (self.manifest or {}).get("num_samples")
        if had is not None and had != num_samples:
            raise DistillError(
                f"topk cache {self.path} holds {had} training samples, this run's data has "
                f"{num_samples}; {_fix(self.path)}"
            )

    def claim(self, num_samples: int, vocab_size: int) -> None:
        """Write the manifest (not complete, no shards) unless there is one: the folder is this cache's.
        Called by one process before any shard is written: temporaries a killed fill left go first."""
        remove_stale_temporaries(self.path)
        if self.manifest is not None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DistillError(
                f"cannot create the topk cache folder {self.path} ({err.strerror or err}); point "
                "distill.topk_cache.dir at a writable folder"
            ) from None
        manifest = {
            **self._expected(),
            "names": self.fingerprints.names,
            "num_samples": num_samples,
            "vocab_size": vocab_size,
            "complete": False,
            "shards": [],
        }
        write_json(self.path / MANIFEST, manifest)
        self.manifest = manifest

    def num_shards(self, num_samples: int) -> int:
        return -(-num_samples // self.settings.shard_samples)

    def record(self, index: int) -> dict[str, Any] | None:
        """Shard ``index``'s record when it was written whole and verifies; None when it is missing."""
        file = self.path / shard_file(index)
        side = file.with_suffix(".json")
        if not side.exists():
            return None
        try:
            record = json.loads(side.read_text())
        except (OSError, ValueError) as err:
            raise DistillError(
                f"topk cache record {side} cannot be read ({first_line(err)}); {_fix(self.path)}"
            ) from None
        self.verify(record)
        return record

    def verify(self, record: dict[str, Any]) -> None:
        """Refuse a shard whose file is gone or whose size or sha256 differs from its record."""
        file = self.path / record["file"]
        problem = _record_problem(record)
        if problem:
            raise DistillError(
                f"topk cache record of {file} is damaged ({problem}); {_fix(self.path)}"
            )
        if not file.exists():
            raise DistillError(f"topk cache shard {file} is missing; {_fix(self.path)}")
        size = file.stat().st_size
        if size != record["bytes"] or file_sha256(file) != record["sha256"]:
            what = (
                f"{size} bytes, recorded {record['bytes']}" if size != record["bytes"] else "sha256"
            )
            raise DistillError(
                f"topk cache shard {file} fails verification ({what}): truncated or changed; "
                f"{_fix(self.path)}"
            )

    def write_shard(self, index: int, first: int, tensors: dict[str, torch.Tensor]) -> None:
        """Write shard ``index`` (samples from ``first``) whole, then its record."""
        from safetensors.torch import save_file

        file = self.path / shard_file(index)
        samples = int(tensors["offsets"].numel() - 1)
        meta = {"format": FORMAT, "first": str(first), "samples": str(samples)}
        atomic_write(file, lambda tmp: save_file(tensors, tmp, metadata=meta))
        record = {
            "file": file.name,
            "first": first,
            "samples": samples,
            "tokens": int(tensors["offsets"][-1]),
            "bytes": file.stat().st_size,
            "sha256": file_sha256(file),
        }
        write_json(file.with_suffix(".json"), record)

    def finish(self, num_samples: int) -> None:
        """List every shard in the manifest and mark it complete (after all shards are written)."""
        assert self.manifest is not None
        records = [self.record(i) for i in range(self.num_shards(num_samples))]
        missing = [i for i, r in enumerate(records) if r is None]
        if missing:
            raise DistillError(
                f"topk cache {self.path} lacks shards {missing[:5]} after filling; fill it again"
            )
        self.manifest = {**self.manifest, "shards": records, "complete": True}
        write_json(self.path / MANIFEST, self.manifest)


class ShardReader:
    """Memory-mapped shards of a complete cache (each verified once when opened), read per sample."""

    def __init__(self, store: CacheStore) -> None:
        from safetensors import safe_open

        assert store.manifest is not None and store.complete
        self.store = store
        self.vocab_size = int(store.manifest["vocab_size"])
        self.num_samples = int(store.manifest["num_samples"])
        self.per_shard = store.settings.shard_samples
        self.handles: list[Any] = []
        self.offsets: list[torch.Tensor] = []
        records = store.manifest["shards"]
        if len(records) != store.num_shards(self.num_samples):
            raise DistillError(
                f"topk cache {store.path} lists {len(records)} shard(s) for "
                f"{self.num_samples} samples, not {store.num_shards(self.num_samples)}; "
                f"{_fix(store.path)}"
            )
        for i, record in enumerate(records):
            store.verify(record)
            if record["file"] != shard_file(i) or record["first"] != i * self.per_shard:
                raise DistillError(
                    f"topk cache {store.path}: shard {i} is listed as {record['file']} from sample "
                    f"{record['first']}; {_fix(store.path)}"
                )
            try:
                handle = safe_open(str(store.path / record["file"]), framework="pt")
            except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
                raise DistillError(
                    f"topk cache shard {store.path / record['file']} is not a safetensors file "
                    f"({first_line(err)}); {_fix(store.path)}"
                ) from None
            self._check_shapes(handle, record)
            self.handles.append(handle)
            self.offsets.append(handle.get_tensor("offsets"))

    def _check_shapes(self, handle: Any, record: dict[str, Any]) -> None:
        """The shard's tensors have the shapes its record and the settings say: (N, k) top-k, (N,) rest
        and tokens, (samples + 1,) offsets ending at N."""
        n, k, samples = record["tokens"], self.store.settings.k, record["samples"]
        expected = {"logprobs": [n, k], "ids": [n, k], "rest": [n], "tokens": [n],
                    "offsets": [samples + 1]}  # fmt: skip
        keys = set(handle.keys())
        for name, shape in expected.items():
            got = list(handle.get_slice(name).get_shape()) if name in keys else None
            if got != shape:
                raise DistillError(
                    f"topk cache shard {self.store.path / record['file']}: {name} has shape {got}, "
                    f"not {shape}; {_fix(self.store.path)}"
                )

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        """``logprobs (L, k)``, ``ids (L, k)``, ``rest (L,)``, ``tokens (L,)`` of training sample ``index``."""
        if not 0 <= index < self.num_samples:
            raise DistillError(
                f"topk cache {self.store.path} has samples 0..{self.num_samples - 1}, the batch asks "
                f"for {index}; the cache was filled for other data"
            )
        shard, local = divmod(index, self.per_shard)
        a, b = (int(x) for x in self.offsets[shard][local : local + 2])
        handle = self.handles[shard]
        rows = {name: handle.get_slice(name)[a:b] for name in TENSORS[:4]}
        ids = rows["ids"]
        if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < self.vocab_size):
            raise DistillError(
                f"topk cache {self.store.path}: sample {index} holds token ids outside 0..{self.vocab_size - 1}"
                f" (the manifest's vocab_size); {_fix(self.store.path)}"
            )
        return rows


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's structure (a key missing or of the wrong type), or None."""
    for key in ("settings", "fingerprints"):
        if not isinstance(manifest.get(key), dict):
            return f"{key} is not a mapping"
    if not _is_int(manifest.get("num_samples")) or not _is_int(manifest.get("vocab_size"), 1):
        return "num_samples or vocab_size is not a positive whole number"
    if not isinstance(manifest.get("complete"), bool) or not isinstance(
        manifest.get("shards"), list
    ):
        return "complete is not true/false or shards is not a list"
    for record in manifest["shards"]:
        problem = _record_problem(record)
        if problem:
            return f"shards: {problem}"
    return None


def _record_problem(record: Any) -> str | None:
    """What is wrong with one shard record, or None: a plain ``shard-NNNNN.safetensors`` name (never a
    path out of the folder), whole numbers, a sha256 digest."""
    if not isinstance(record, dict):
        return f"a record is {type(record).__name__}, not a mapping"
    name = record.get("file")
    if not isinstance(name, str) or not re.fullmatch(r"shard-\d{5,}\.safetensors", name):
        return f"file {name!r} is not a shard-NNNNN.safetensors name"
    if not all(_is_int(record.get(k)) for k in ("first", "samples", "tokens", "bytes")):
        return f"{name}: first, samples, tokens or bytes is not a whole number"
    if not isinstance(record.get("sha256"), str):
        return f"{name}: sha256 is not a string"
    return None
