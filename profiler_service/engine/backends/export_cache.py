"""ONNX exports kept in memory, keyed by what determines them, so one op is exported once per process.

A table job measures each op in several rounds, and the anchors and ``verify`` measure the same networks again;
every measurement builds the module afresh from its spec with seeded weights, so the same spec gives the same
module. Exporting it to ONNX traces a forward pass, which for a 224x224 op or network costs far more than its timed
runs; the export of an identical module is the same model, so it is kept. The key is a digest of the module's
structure (its repr) and every parameter and buffer, plus the input shape and the opset: a module that differs in
any weight is exported again. The cache holds at most ``max_bytes`` of models and drops the least recently used.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

from torch import nn

#: The default memory of one backend's cache: a 224x224 mobile network exports to a few tens of MB.
DEFAULT_EXPORT_CACHE_BYTES = 256 * 2**20


def module_digest(module: nn.Module) -> str:
    """A digest of a module's structure and weights: equal digests export to the same ONNX model."""
    digest = hashlib.blake2b(repr(module).encode(), digest_size=20)
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


class ExportCache:
    """Serialized ONNX models by (module digest, input shape, opset), least recently used dropped first."""

    def __init__(self, max_bytes: int = DEFAULT_EXPORT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"export cache: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.exports = 0  # how many times the exporter ran (a miss): what tests and benchmarks count
        self._models: OrderedDict[tuple[str, tuple[int, ...], int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def model(self, module: nn.Module, input_shape: tuple[int, ...], opset: int,
              export: Callable[[], bytes]) -> bytes:
        """The ONNX model of ``module``: the kept one, or ``export()``'s (then kept while it fits)."""
        key = (module_digest(module), tuple(input_shape), opset)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
        model = export()
        with self._lock:
            self.exports += 1
            if len(model) <= self.max_bytes and key not in self._models:
                self._models[key] = model
                self._bytes += len(model)
                while self._bytes > self.max_bytes:
                    _, dropped = self._models.popitem(last=False)
                    self._bytes -= len(dropped)
        return model

    def __len__(self) -> int:
        return len(self._models)
