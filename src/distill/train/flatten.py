"""State dicts as flat tensor dicts for safetensors: CPU copies of a state dict's tensors (tied weights
stored once), nested states (an optimizer's) with their tensors replaced by keys and back, and the
prefixed parts of a checkpoint."""

from __future__ import annotations

from typing import Any

import torch


def state_tensors(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """CPU copies of a state dict's tensors; tied weights (shared storage) are stored once per name."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        out[prefix + key] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def flatten_state(state: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested state (e.g. an optimizer state_dict) with ``{"__tensor__": key}``."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {str(k): flatten_state(v, f"{prefix}.{k}", tensors) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)]
    return state


def unflatten_state(state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(state, dict):
        if set(state) == {"__tensor__"}:
            return tensors[state["__tensor__"]]
        return {k: unflatten_state(v, tensors) for k, v in state.items()}
    if isinstance(state, list):
        return [unflatten_state(v, tensors) for v in state]
    return state


def optimizer_state_from_json(state: dict[str, Any]) -> dict[str, Any]:
    """JSON turned optimizer state keys into strings and tuples into lists; the optimizer wants integer
    parameter ids, and its group settings back as they were (``betas``, Rprop's ``etas``: tuples)."""
    state = dict(state)
    state["state"] = {int(k): v for k, v in state.get("state", {}).items()}
    if isinstance(state.get("param_groups"), list):
        state["param_groups"] = [
            {
                k: tuple(v) if isinstance(v, list) and k not in ("params", "param_names") else v
                for k, v in group.items()
            }
            if isinstance(group, dict)
            else group
            for group in state["param_groups"]
        ]
    return state


def model_tensors(
    tensors: dict[str, torch.Tensor], prefix: str = "model."
) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
