"""Terminal tables that stay readable at 80-100 columns, and the number formats they share.

Names (artifacts, layers) are what a reader looks up, so they are never cut: their columns do
not wrap and are at least as wide as the longest name. Numbers give way instead: they are
written short (three significant digits, ``k``/``M`` suffixes) and their headers and notes
wrap. The same cell formats serve ``report.html``, so both show the same figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sparsify_cli.exporters.artifact import LatencyRow

NOISY_NOTE = (
    "* noisy: the 95% interval is wider than ±5% of the figure; rerun with a longer --duration, "
    "or on a quieter machine"
)


def ms(value: float | None) -> str:
    """Milliseconds with three significant digits: 0.0553, 1.33, 16.4, 245."""
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def count(value: float | None) -> str:
    """A large count short: 640, 18.4k, 590k, 1.18M, 3.4G (MACs, samples/s, parameters)."""
    if value is None:
        return "-"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.3g}{suffix}" if scaled < 1000 else f"{scaled:,.0f}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def speedup(row: LatencyRow) -> str:
    """``1.02x ±3%`` (the 95% interval's larger half-width), ``*`` appended when the figure is
    noisy (:data:`NOISY_NOTE` explains the mark under the table)."""
    speed = row.speedup_vs_dense
    if speed is None:
        return "-"
    text = f"{speed:.2f}x"
    low, high = row.ratio_low, row.ratio_high
    if low is not None and high is not None and (low, high) != (1.0, 1.0):
        half = max(speed - low, high - speed) / speed
        text += f" ±{100 * half:.0f}%"
    return text + ("*" if row.noisy else "")


TEXT_FLOOR = 12
"""Narrowest a text column (a note, a reason) gets; longer words in it fold."""


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int,
    names: Sequence[str] = (),
    left: Sequence[str] = (),
    optional: Sequence[str] = (),
) -> Any:
    """A rich table that fits ``width`` columns without cutting a name or a number.

    Names keep their text whole on one line; numbers and headers wrap only at spaces (a number
    is never broken); text columns (``left``: notes, reasons) wrap anywhere past
    :data:`TEXT_FLOOR`. When that is wider than ``width``, the ``optional`` columns are left out,
    in the order given, until it fits (the JSON output keeps everything), then the outer border
    goes, and as a last resort long names move into a numbered list above the table, whole,
    with their number in the table. ``left`` and name columns are left-aligned; the others are
    numbers, right-aligned.
    """
    from rich import box
    from rich.console import Group
    from rich.table import Table

    cols = list(columns)
    cells = [list(r) for r in rows]

    def natural(i: int) -> int:
        return max([len(cols[i]), *(len(r[i]) for r in cells)])

    def least(i: int) -> int:
        if cols[i] in names:
            return natural(i)
        words = [w for text in [cols[i], *(r[i] for r in cells)] for w in text.split()]
        longest = max((len(w) for w in words), default=1)
        return min(longest, max(TEXT_FLOOR, len(cols[i]))) if cols[i] in left else longest

    def total(widths: list[int], edge: bool = True) -> int:
        return sum(widths) + 3 * len(widths) + (1 if edge else -3)

    def floor() -> list[int]:
        return [least(i) for i in range(len(cols))]

    def drop_optional() -> None:
        nonlocal cells
        for col in optional:
            if total(floor()) <= width or col not in cols:
                continue
            i = cols.index(col)
            cols.pop(i)
            cells = [r[:i] + r[i + 1 :] for r in cells]

    keep_cols, keep_cells = list(cols), [list(r) for r in cells]
    drop_optional()
    legend = []
    if total(floor(), edge=False) > width:  # names too long for any table: list them apart
        cols[:], cells = keep_cols, keep_cells
        for i, col in enumerate(cols):
            if col not in names:
                continue
            for r in cells:
                if r[i]:
                    legend.append(f"[{len(legend) + 1}] {r[i]}")
                    r[i] = f"[{len(legend)}]"
        drop_optional()
    widths = [natural(i) for i in range(len(cols))]
    least_widths = floor()
    edge = total(least_widths) <= width
    while total(widths, edge) > width and widths != least_widths:  # shrink the most wrappable
        i = max(range(len(cols)), key=lambda j: widths[j] - least_widths[j])
        widths[i] -= 1
    grid = Table(
        title=title, title_justify="left", box=box.HEAVY_HEAD, show_edge=edge, pad_edge=edge
    )
    for col, w in zip(cols, widths, strict=True):
        grid.add_column(
            col,
            justify="left" if col in names or col in left else "right",
            width=w,
            no_wrap=col in names,
            overflow="fold",
        )
    for row in cells:
        grid.add_row(*row)
    if not legend:
        return grid
    from rich.text import Text

    return Group(*(Text(line, no_wrap=True, overflow="ignore") for line in legend), grid)
