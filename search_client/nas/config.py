"""The search's configuration: :class:`SearchConfig`, everything that determines a search (saved in its checkpoint).

Its field defaults are the only copy of the search's defaults: the command line takes them from here
(:meth:`SearchConfig.defaults`).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from search_client.nas.losses import LOSS_KINDS
from search_client.nas.supernet import SEARCH_MODES
from search_client.nas.within_target import DERIVE_RULES
from search_client.table.objective import MODES as DEVICE_MODES
from search_client.training.datasets import DataOptions, SearchData, open_search_data

GRAD_ESTIMATORS = ("binary", "reinforce")
#: Checkpoints written before the data options were one ``data`` object held them as flat fields: old name -> name
#: in :class:`DataOptions` (loaded by :meth:`SearchConfig.from_dict`).
FLAT_DATA_FIELDS = {"data": "source", "valid_fraction": "valid_fraction", "valid_per_class": "valid_per_class",
                    "val_folder": "val_folder", "workers": "workers", "color_jitter": "color_jitter"}


@dataclass
class SearchConfig:
    """Everything that determines a search (saved with every checkpoint; a resume must use the same).

    ``epochs`` counts the joint search epochs; ``warmup_epochs`` weight-only epochs run before them.
    ``targets_ms`` holds one target per latency table. ``loss`` is one of
    :data:`search_client.nas.losses.LOSS_KINDS` (default ``sq#log``: two-sided and unit-free, any target works);
    ``strength`` is its latency weight (None: the loss's default, 0: no latency term). ``adaptive`` moves that
    weight (and the two-sided loss's aim) until the argmax architecture meets the target: None (the default) turns
    it on with the binarized-path gradient and off with REINFORCE, whose reward does not use the loss (the defaults
    were chosen side by side by ``benchmarks/search_steering.py``: docs/search.md). ``target_band`` is the
    tolerance around the target (see :mod:`search_client.nas.target`): the adaptive weight aims inside it, and the
    ``within-target`` derive rule (see :mod:`search_client.nas.within_target`) exports the most probable
    architecture inside it when the argmax is not.

    ``arch_lr`` is Adam's lr of the architecture parameters; None (the default) scales it to the run's number of
    architecture steps (:func:`search_client.nas.schedule.scaled_arch_lr`), so that the probabilities can move
    within the run. The paper's schedule (lr 1e-3, one architecture step every 5 weight steps, made for ~100,000
    architecture steps) is ``arch_lr=1e-3, arch_every=5``.

    ``data``: the data options a retraining has too (:class:`search_client.training.datasets.DataOptions`: the
    source, the architecture-step split, DataLoader workers, colour jitter); ``seed`` also fixes the split.

    The other defaults are the paper's and the release's, except ``derive`` (the paper's rule is ``argmax``).
    """

    targets_ms: list[float]
    data: DataOptions = field(default_factory=DataOptions)
    epochs: int = 10
    warmup_epochs: int = 0
    seed: int = 0
    batch_size: int = 64
    mode: str = "full_v2"
    grad_estimator: str = "binary"
    loss: str = "sq#log"
    strength: float | None = None
    loss_scale: float = 0.2
    log_unit_ms: float = 1.0
    adaptive: bool | None = None
    adaptive_rate: float = 1.05
    target_band: float = 0.1
    derive: str = "within-target"
    device_weights: list[float] | None = None
    device_mode: str = "weighted"
    warmup_lr: float = 0.05
    lr: float = 0.025
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    arch_lr: float | None = None
    arch_betas: tuple[float, float] = (0.0, 0.999)
    arch_eps: float = 1e-8
    arch_every: int = 5
    init_std: float = 1e-3
    reinforce_samples: int = 10
    reinforce_tradeoff: float = 0.1
    baseline_decay: float = 0.99

    def __post_init__(self) -> None:
        self.targets_ms = [float(t) for t in self.targets_ms]
        self.arch_betas = (float(self.arch_betas[0]), float(self.arch_betas[1]))
        if self.adaptive is None:
            self.adaptive = self.grad_estimator != "reinforce"
        for name in ("epochs", "warmup_epochs", "seed", "batch_size", "arch_every", "reinforce_samples"):
            value = getattr(self, name)
            low = 0 if name in ("warmup_epochs", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"search config field '{name}': must be an integer >= {low}, got {value!r}")
        numbers = ["warmup_lr", "lr", "momentum", "weight_decay", "label_smoothing", "arch_eps", "init_std",
                   "loss_scale", "log_unit_ms", "reinforce_tradeoff", "target_band"]
        if self.arch_lr is not None:
            numbers.append("arch_lr")
        for name in numbers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"search config field '{name}': must be a finite number >= 0, got {value!r}")
        if self.arch_lr == 0:
            raise ValueError("search config field 'arch_lr': must be > 0 (or None: scaled to the run's length)")
        self._check_choices()
        if not self.targets_ms:
            raise ValueError("search config field 'targets_ms': at least one latency target is needed")
        if not 0.0 <= self.target_band < 1.0:
            raise ValueError(f"search config field 'target_band': must be in [0, 1), got {self.target_band!r}")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"search config field 'baseline_decay': must be in [0, 1), got {self.baseline_decay!r}")
        if self.device_weights is not None and self.device_mode == "max":
            raise ValueError("search config field 'device_weights': the max device mode takes the device furthest "
                             "over its target and uses no weights; drop the weights or use device_mode 'weighted'")
        if not isinstance(self.data, DataOptions):
            raise ValueError(f"search config field 'data': expected DataOptions, got {type(self.data).__name__}")

    def _check_choices(self) -> None:
        for name, allowed in (("mode", SEARCH_MODES), ("grad_estimator", GRAD_ESTIMATORS), ("loss", LOSS_KINDS),
                              ("device_mode", DEVICE_MODES), ("derive", DERIVE_RULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"search config field '{name}': expected one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.grad_estimator == "reinforce" and self.mode == "darts":
            raise ValueError("search config field 'mode': darts trains a mixture; REINFORCE needs a sampling mode")
        if self.grad_estimator == "reinforce" and self.adaptive:
            raise ValueError("search config field 'adaptive': it moves the latency loss's weight, which REINFORCE "
                             "does not use (its reward has the fixed exponent reinforce_tradeoff)")

    @property
    def total_epochs(self) -> int:
        """Warm-up plus joint epochs."""
        return self.warmup_epochs + self.epochs

    def open_data(self, input_size: tuple[int, int], in_chs: int) -> SearchData:
        """The data for a supernet of this input (split and shuffling seeded by ``seed``)."""
        return open_search_data(self.data, tuple(input_size), in_chs, self.batch_size, self.seed)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (what a checkpoint stores)."""
        data = asdict(self)
        data["arch_betas"] = list(self.arch_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """The config of :meth:`to_dict`'s output (or of a checkpoint written before the data options were one
        ``data`` object: flat fields, see :data:`FLAT_DATA_FIELDS`); ValueError naming an unknown field."""
        data = dict(data)
        if not isinstance(data.get("data", {}), dict):  # an older checkpoint: data was the source, beside the rest
            flat = {new: data.pop(old) for old, new in FLAT_DATA_FIELDS.items() if old in data}
            data["data"] = flat
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"search config field '{unknown[0]}': unknown")
        if "data" in data:
            options = data["data"]
            unknown = sorted(set(options) - {f.name for f in fields(DataOptions)})
            if unknown:
                raise ValueError(f"search config field 'data.{unknown[0]}': unknown")
            data["data"] = DataOptions(**options)
        return cls(**data)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's default (``targets_ms`` has none): the defaults of the command line's options."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}
