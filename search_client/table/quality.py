"""A latency table's own quality: which entries are noise, which orderings within a cell cannot be right.

Why. A table built on a shared machine can hold entries whose spread is as large as the differences the search
has to resolve, and a disturbed measurement can rank a bigger op below a smaller one. Both steer a search without
any sign in its output. docs/protocol.md "Table quality" explains it for users.

- **Noise** of an entry (:func:`entry_noise`): how well its median is known, relative to it: the half-width of
  the median's 95% confidence interval, ``1.58 IQR / sqrt(samples)`` (McGill, Tukey and Larsen's notch), or, when
  its stats carry the medians of its rounds (``round_medians_ms``), half their spread (max - min) when larger. An
  entry is **noisy** when its noise exceeds :data:`NOISE_BOUND`. The spread of single runs (IQR / median) is not
  the entry's noise: in a duet every block is scaled by its own reference blocks and after a cache flush every run
  meets memory afresh, so single runs spread by 10-25% of the median on a quiet device while the rounds' medians
  agree within a few percent.
- **Implausible ordering** (:func:`implausible_pairs`): within one cell, candidate A costs more multiply-adds AND
  more memory traffic (weights plus activations, :func:`nas_ops.counting.op_memory_bytes`) than candidate B, yet
  was measured cheaper than B beyond their noise: A's median plus half its IQR lies below B's median minus half its
  IQR (their middle halves do not overlap).

``build_table`` measures such entries again with ``force`` (:data:`QUALITY_PASSES` extra passes at most, one job
each) and stores what stays in the table file (:class:`TableQuality`, its ``quality`` object).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nas_ops.counting import count_flops, op_memory_bytes
from nas_ops.space import SearchSpace
from nas_ops.spec import format_spec

#: The noise (the relative half-width of the median's 95% interval) above which an entry is noisy: its median is
#: then uncertain by more than the +-10% a table promises for a whole network. A quiet device stays well below.
NOISE_BOUND = 0.1
#: McGill, Tukey and Larsen's factor: ``median +- NOTCH_FACTOR * IQR / sqrt(n)`` is about a 95% interval.
NOTCH_FACTOR = 1.58
#: Extra passes that measure the noisy and implausible entries again (each one job), at most.
QUALITY_PASSES = 2
#: The optional Stats field with the medians of an entry's rounds (ms), read when a device gives it.
ROUND_MEDIANS_FIELD = "round_medians_ms"


def entry_noise(stats: Mapping[str, Any]) -> float:
    """The noise of one entry (module docstring): ``NOTCH_FACTOR * IQR / sqrt(samples) / median``, or half the
    rounds' (max - min) / median when larger; infinite for an entry with a median of 0 and any spread."""
    median = float(stats["median_ms"])
    spreads = [NOTCH_FACTOR * float(stats["iqr_ms"]) / math.sqrt(max(1, int(stats["samples"])))]
    rounds = stats.get(ROUND_MEDIANS_FIELD)
    if isinstance(rounds, Sequence) and len(rounds) > 1:
        spreads.append((max(rounds) - min(rounds)) / 2)
    spread = max(spreads)
    if median <= 0:
        return 0.0 if spread <= 0 else float("inf")
    return spread / median


def noisy_entries(stats: Mapping[str, Mapping[str, Any]], bound: float = NOISE_BOUND) -> list[str]:
    """The op specs of ``stats`` whose :func:`entry_noise` exceeds ``bound``, in ``stats`` order."""
    return [spec for spec, s in stats.items() if entry_noise(s) > bound]


def implausible_pairs(space: SearchSpace, stats: Mapping[str, Mapping[str, Any]], batch: int = 1,
                      dtype: str = "float32") -> list[tuple[int, str, str]]:
    """``(cell index, cheaper-measured spec, costlier-measured spec)`` of every implausible ordering (module
    docstring): the first costs more multiply-adds and more memory traffic, yet was measured cheaper beyond both
    entries' noise. Zero candidates and ops missing from ``stats`` are skipped."""
    pairs = []
    for cell in space.cells():
        ops = [(format_spec(op), count_flops(op), op_memory_bytes(op, batch, dtype))
               for j, op in enumerate(cell.candidates) if not cell.is_zero(j) and format_spec(op) in stats]
        for big, big_macs, big_bytes in ops:
            for small, small_macs, small_bytes in ops:
                if big_macs > small_macs and big_bytes > small_bytes and _cheaper(stats[big], stats[small]):
                    pairs.append((cell.index, big, small))
    return pairs


def _cheaper(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether ``a`` was measured cheaper than ``b`` beyond their noise (their middle halves do not overlap)."""
    return float(a["median_ms"]) + float(a["iqr_ms"]) / 2 < float(b["median_ms"]) - float(b["iqr_ms"]) / 2


@dataclass(frozen=True)
class TableQuality:
    """What stays wrong with a table after its re-measurements: ``noisy`` op specs, ``implausible`` orderings
    (cell, the op measured cheaper, the op it should not undercut), the ``bound`` used and the extra ``passes``
    made."""

    bound: float
    noisy: tuple[str, ...] = ()
    implausible: tuple[tuple[int, str, str], ...] = ()
    passes: int = 0

    @property
    def ok(self) -> bool:
        """Nothing noisy or implausible stays."""
        return not self.noisy and not self.implausible

    def suspects(self) -> list[str]:
        """Every op spec that is noisy or in an implausible ordering (each once, first-seen order)."""
        specs = [*self.noisy, *(spec for _, a, b in self.implausible for spec in (a, b))]
        return list(dict.fromkeys(specs))

    def summary(self) -> str:
        """One line saying what stays (or that nothing does)."""
        if self.ok:
            return (f"table quality: every entry's median known within +-{self.bound:.0%} and no "
                    f"implausible ordering ({self.passes} re-measurement pass(es))")
        parts = []
        if self.noisy:
            parts.append(f"{len(self.noisy)} noisy entr{'y' if len(self.noisy) == 1 else 'ies'} (median uncertain "
                         f"beyond +-{self.bound:.0%}): {', '.join(self.noisy)}")
        if self.implausible:
            orderings = "; ".join(f"cell {i}: {a} < {b}" for i, a, b in self.implausible)
            parts.append(f"{len(self.implausible)} implausible ordering(s) (more multiply-adds and memory "
                         f"traffic, measured cheaper): {orderings}")
        return (f"table quality: after {self.passes} re-measurement pass(es), " + "; ".join(parts)
                + "; measure the table again on a quiet device")

    def as_dict(self) -> dict[str, Any]:
        """The ``quality`` object of a table file."""
        return {"bound": self.bound, "noisy": list(self.noisy),
                "implausible": [{"cell": i, "cheaper": a, "than": b} for i, a, b in self.implausible],
                "passes": self.passes}

    @classmethod
    def from_dict(cls, data: Any, source: str = "table") -> TableQuality:
        """A ``quality`` object of a table file; ValueError naming the field when malformed."""
        try:
            bound, passes = float(data["bound"]), int(data["passes"])
            noisy = tuple(str(spec) for spec in data["noisy"])
            implausible = tuple((int(p["cell"]), str(p["cheaper"]), str(p["than"])) for p in data["implausible"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: field 'quality': malformed ({exc!r})") from exc
        return cls(bound, noisy, implausible, passes)


def check_quality(space: SearchSpace, stats: Mapping[str, Mapping[str, Any]], *, batch: int = 1,
                  dtype: str = "float32", bound: float = NOISE_BOUND, passes: int = 0) -> TableQuality:
    """The :class:`TableQuality` of a table's ``stats`` (``{op spec: Stats}`` of the ops it uses)."""
    return TableQuality(bound, tuple(noisy_entries(stats, bound)),
                        tuple(implausible_pairs(space, stats, batch, dtype)), passes)

