"""What a command line says on stderr about a table it has just built from a device (``lut``, ``search --device``)."""

from __future__ import annotations

from search_client.table.latency_table import LatencyTable


def table_warnings(table: LatencyTable, where: str = "") -> list[str]:
    """The lines a freshly built table reports on stderr (each ``warning: <where>...``): flagged entries used,
    entries still noisy or implausible, a fixed cost the anchors' intercept brings near 0."""
    lines = []
    if table.flagged:
        lines.append(f"{len(table.flagged)} flagged entr{'y' if len(table.flagged) == 1 else 'ies'} used "
                     f"(--allow-flagged): {', '.join(table.flagged)}")
    if table.quality is not None and not table.quality.ok:
        lines.append(table.quality.summary())
    fixed = table.fixed_cost_warning()
    if fixed is not None:
        lines.append(fixed)
    return [f"warning: {where}{line}" for line in lines]

