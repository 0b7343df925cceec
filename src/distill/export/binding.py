"""Call an onnxruntime session on torch tensors with as little per-call work as possible (IOBinding).

At batch 1 on a small model, what surrounds the onnxruntime call costs as much as its kernels, and a torch
operator next to the call slows both (caches). :class:`BoundRunner` therefore binds inputs where they lie,
hands out outputs from a pool made ahead of time, and calls onnxruntime's pybind layer directly when this
onnxruntime has it (its public wrappers cost more per bind); timings in ``docs/export.md``.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

POOL_BYTES = 64 << 10  # outputs made ahead at a time (bytes), at most POOL_SIZE of them
POOL_SIZE = 256


def _pybind(session: Any, binding: Any) -> tuple[Any, Any, Any, Any] | None:
    """onnxruntime's pybind session, binding, CPU device and ``f(array) -> OrtValue`` behind the public
    ``InferenceSession``, ``IOBinding`` and ``OrtValue`` (the same calls without the wrappers' per-call
    Python), or None when this onnxruntime lays them out otherwise (then the public methods are used).
    The OrtValues lie over the array's memory (no copy) and, unlike the public ones, do not keep it
    alive."""
    try:
        from onnxruntime.capi import _pybind_state
        from onnxruntime.capi.onnxruntime_inference_collection import OrtDevice

        device = OrtDevice.make("cpu", 0)._get_c_device()
        from_numpy = _pybind_state.OrtValue.ortvalue_from_numpy
        return session._sess, binding._iobinding, device, lambda array: from_numpy(array, device)
    except (ImportError, AttributeError):
        return None


class _Bound:
    """One input shape's binding. Per input: the runner's own buffer (for inputs that need a cast copy)
    and the address bound now. ``bind_output(value)`` and ``run()`` are the binding's calls with
    everything but the output fixed (``functools.partial``: no Python frame per call); ``pool`` holds
    output tensors made ahead with an OrtValue over each one's memory, next last (binding a ready
    OrtValue is cheaper than binding by address, for which onnxruntime makes a tensor). ``c`` is
    onnxruntime's pybind (session, binding, device, OrtValue maker), or None when the public methods
    are used."""

    __slots__ = ("binding", "buffers", "pointers", "shapes", "dtypes", "out_shape", "out_dtype")
    __slots__ += ("pool", "c", "target", "device", "bind_output", "run", "value")

    def __init__(
        self,
        session: Any,
        buffers: dict[str, torch.Tensor],
        output_name: str,
        output_like: torch.Tensor,
        pybind: bool = True,
    ) -> None:
        self.binding, self.buffers = session.io_binding(), buffers
        self.shapes = {name: list(b.shape) for name, b in buffers.items()}
        self.dtypes = {name: _numpy_dtype(b.dtype) for name, b in buffers.items()}
        self.out_shape, self.out_dtype = list(output_like.shape), output_like.numpy().dtype
        self.c = _pybind(session, self.binding) if pybind else None
        # the public and pybind bind calls differ only in how the device is given
        if self.c is None:
            self.target, self.device = self.binding, ("cpu", 0)
            self.value = _public_value
            self.run = functools.partial(session.run_with_iobinding, self.binding)
        else:
            c_session, self.target, device, self.value = self.c
            self.device = (device,)
            # no RunOptions: onnxruntime's wrapper looks one up through an exception (docs/export.md)
            self.run = functools.partial(c_session.run_with_iobinding, self.target, None)
        self.bind_output = functools.partial(self.target.bind_ortvalue_output, output_name)
        self.pool: list[tuple[torch.Tensor, Any]] = []
        self.pointers = {name: 0 for name in buffers}
        for name, buffer in buffers.items():
            self.point(name, buffer)

    def point(self, name: str, x: torch.Tensor) -> None:
        """Bind input ``name`` to ``x``'s memory (contiguous, the declared dtype, on the CPU)."""
        pointer = x.data_ptr()
        if self.pointers[name] != pointer:
            shape, dtype = self.shapes[name], self.dtypes[name]
            self.target.bind_input(name, *self.device, dtype, shape, pointer)
            self.pointers[name] = pointer

    def output(self) -> torch.Tensor:
        """A new output tensor (never handed out before), bound as the next run's output."""
        if not self.pool:
            self.refill()
        tensor, value = self.pool.pop()
        self.bind_output(value)
        return tensor

    @torch.inference_mode(False)  # plain tensors, whatever mode the call that refills runs in
    def refill(self) -> None:
        shape, dtype = self.out_shape, self.out_dtype
        size = max(1, int(np.prod(shape)) * dtype.itemsize)
        block = np.empty((max(1, min(POOL_SIZE, POOL_BYTES // size)), *shape), dtype)
        # each tensor its own storage (saves alone); it keeps its row alive, the pybind OrtValue does not
        self.pool = [(torch.from_numpy(row), self.value(row)) for row in reversed(block)]


class BoundRunner:
    """Runs an onnxruntime session on torch tensors the way a latency-minded deployment does: through an
    IOBinding made once per input shape. A call binds each input where it already lies (the caller's
    tensor, when it is contiguous, on the CPU and of the declared dtype; otherwise a cast copy in the
    runner's own buffer), binds the next output tensor of a pool made ahead (``(B, ...)``, a new tensor
    each call, never overwritten later), and runs. In the common case no torch operator runs and no
    OrtValue is made per call.

    The first call with new input shapes runs plainly (``session.run``) and binds buffers for them; the
    last ``max_shapes`` shapes bound stay bound, inputs and outputs over ``max_bytes`` each are never
    bound (a binding keeps a buffer per input; at that size the call overhead is small next to the
    kernels). A call made while another thread
    holds the binding runs plainly; a file whose output shape depends on input values (the bound output
    does not fit) runs plainly from then on. The binding may keep the address of a caller's tensor after
    the call, but every input is re-pointed before each run, so a run only reads tensors of its own call.
    """

    def __init__(
        self,
        session: Any,
        input_dtypes: Mapping[str, torch.dtype],
        output_name: str,
        max_shapes: int = 4,
        max_bytes: int = 1 << 20,
    ) -> None:
        self.session = session
        self.input_dtypes = dict(input_dtypes)
        self.first_input = next(iter(self.input_dtypes))
        self.first_dtype = self.input_dtypes[self.first_input]
        self.single_input = len(self.input_dtypes) == 1
        self.output_name = output_name
        self.max_shapes, self.max_bytes = max_shapes, max_bytes
        self.bound: OrderedDict[tuple[torch.Size, ...], _Bound] = OrderedDict()
        self.lock = threading.Lock()
        self.pybind = True  # False: only onnxruntime's public methods (tests)

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``inputs``: one tensor per input name of the file; returns its first output."""
        key = tuple(inputs[name].shape for name in self.input_dtypes)
        entry = self.bound.get(key)
        if entry is None or not self.lock.acquire(blocking=False):
            return self._run_plain(inputs, key)
        try:
            for name, dtype in self.input_dtypes.items():
                x = inputs[name]
                if _in_place(x, dtype):
                    entry.point(name, x)
                else:
                    buffer = entry.buffers[name]
                    buffer.copy_(x.detach() if x.requires_grad else x)  # casts, moves to CPU
                    entry.point(name, buffer)
            output = entry.output()
            if self._run_bound(entry):
                return output
        finally:
            self.lock.release()
        return self._run_plain(inputs, key)

    def one(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`__call__` for a file with one input, written out flat: at batch 1 each Python call
        level around the run costs microseconds (the kernels left the caches cold), and the small
        student's kernels take only tens of microseconds."""
        entry = self.bound.get((x.shape,))
        if (
            entry is None
            or x.dtype is not self.first_dtype
            or not x.is_cpu
            or x.requires_grad
            or not x.is_contiguous()
            or not self.lock.acquire(blocking=False)
        ):
            return self({self.first_input: x})
        try:
            if entry.pointers[self.first_input] != x.data_ptr():
                entry.point(self.first_input, x)
            if not entry.pool:
                entry.refill()
            output, value = entry.pool.pop()
            entry.bind_output(value)
            entry.run()
            return output
        except RuntimeError:  # see _run_bound
            self._unbind_all()
        finally:
            self.lock.release()
        return self({self.first_input: x})

    def _run_bound(self, entry: _Bound) -> bool:
        try:
            entry.run()
            return True
        except RuntimeError:
            self._unbind_all()
            return False

    def _unbind_all(self) -> None:
        """An output shape that depends on the input values (the bound output did not fit): run plainly
        from now on."""
        self.bound.clear()
        self.max_shapes = 0

    def _run_plain(self, inputs: Mapping[str, torch.Tensor], key: tuple[torch.Size, ...]) -> Any:
        feed = {name: _as_array(inputs[name], dtype) for name, dtype in self.input_dtypes.items()}
        output = torch.from_numpy(self.session.run([self.output_name], feed)[0])
        if self.max_shapes and key not in self.bound and self.lock.acquire(blocking=False):
            try:
                self._bind(key, output)
            finally:
                self.lock.release()
        return output

    # plain tensors: inference-mode ones could not be written outside it
    @torch.inference_mode(False)
    def _bind(self, key: tuple[torch.Size, ...], like: torch.Tensor) -> None:
        buffers = {
            name: torch.empty(shape, dtype=dtype)
            for (name, dtype), shape in zip(self.input_dtypes.items(), key, strict=True)
        }
        sizes = [b.element_size() * b.numel() for b in (*buffers.values(), like)]
        if max(sizes) > self.max_bytes or min(sizes) == 0:  # nothing to gain / no address to bind
            return
        self.bound[key] = _Bound(self.session, buffers, self.output_name, like, self.pybind)
        while len(self.bound) > self.max_shapes:
            self.bound.popitem(last=False)


def _public_value(array: np.ndarray) -> Any:
    from onnxruntime import OrtValue

    return OrtValue.ortvalue_from_numpy(array)


def _in_place(x: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether onnxruntime can read ``x`` where it lies: contiguous, on the CPU, of the file's dtype."""
    return x.dtype is dtype and x.is_cpu and not x.requires_grad and x.is_contiguous()


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


def _as_array(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    if x.requires_grad:
        x = x.detach()
    if x.dtype != dtype or x.device.type != "cpu":
        x = x.to("cpu", dtype)
    return np.ascontiguousarray(x.numpy())  # no copy when already contiguous (the usual case)
