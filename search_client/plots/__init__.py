"""Figures of the search client (matplotlib, Agg canvas: no display needed)."""
