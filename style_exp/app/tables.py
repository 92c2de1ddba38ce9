"""Result tables as Markdown (for notes and the terminal) and CSV (for spreadsheets)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path


def markdown_table(rows: Sequence[dict[str, object]], digits: int = 4) -> str:
    """A Markdown table with the first row's keys as columns; floats to ``digits`` figures."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{row[c]:.{digits}g}" if isinstance(row[c], float)
                                else str(row[c]) for c in header) + " |" for row in rows]
    return "\n".join(lines)


def write_tables(rows: Sequence[dict[str, object]], stem: Path,
                 preamble: str = "") -> tuple[Path, Path]:
    """``stem``.csv and ``stem``.md (the Markdown table after an optional preamble)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text((f"{preamble}\n\n" if preamble else "") + markdown_table(rows) + "\n")
    return csv_path, md_path
