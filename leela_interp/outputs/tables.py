"""The report's tables and number cells (plain data and their formatting), shared by
:mod:`leela_interp.outputs.report` and :mod:`leela_interp.outputs.control`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def format_mean(mean: float, err: float | None = None, digits: int = 3) -> str:
    """``mean ± err`` with ``digits`` decimals; ``n/a`` for a missing or non-finite mean."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    if err is None or not np.isfinite(err):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {err:.{digits}f}"


@dataclass
class Table:
    """A table of the report (rendered by :func:`~leela_interp.outputs.report.markdown` and
    :func:`~leela_interp.outputs.report.html_page`)."""

    header: list[str]
    rows: list[list]


def one_table(header: list[str], rows: list[list]) -> list[Table]:
    """One :class:`Table` of ``header`` and ``rows`` (every cell as text), in a list."""
    return [Table([str(h) for h in header], [[str(c) for c in row] for row in rows])]


def effect_cell(mean: float, err: float, n: int) -> str:
    """``mean ± err``; a mean over fewer than 2 puzzles shows its n instead of a bar."""
    if n < 1 or not np.isfinite(mean):
        return "n/a"
    if n < 2:
        return f"{mean:.3f} (n={n}, no error bar)"
    return format_mean(mean, err)
