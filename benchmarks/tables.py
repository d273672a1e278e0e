"""Plain-text tables for the benchmark scripts."""

from __future__ import annotations


def print_table(title: str, header: list[str], rows: list[list], digits: int = 2) -> None:
    """Print `rows` under `header` in aligned columns (floats with `digits` decimals)."""
    cells = [header] + [[f"{c:.{digits}f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
