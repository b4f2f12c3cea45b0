"""A small table with a text feature whose label decides most of the target (shared by the text-feature tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = ("red", "green", "blue")


def shop_rows(n: int = 240, seed: int = 0) -> list[dict[str, object]]:
    """Rows of ``size`` (number), ``colour`` (text, sometimes missing) and ``y``: red, or a large green, is 1."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        colour = COLOURS[int(rng.integers(0, 3))]
        size = round(float(rng.normal()), 6)
        y = int(colour == "red" or (colour == "green" and size > 0))
        rows.append({"size": size, "colour": None if i % 40 == 7 else colour, "y": y})
    return rows


def write_shop_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    lines = ["size,colour,y"] + [f"{r['size']},{r['colour'] or ''},{r['y']}" for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_shop_parquet(path: Path, rows: list[dict[str, object]], *, dictionary: bool = True) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    colour = pa.array([r["colour"] for r in rows], type=pa.string())
    table = pa.table(
        {
            "size": pa.array([r["size"] for r in rows], type=pa.float64()),
            "colour": colour.dictionary_encode() if dictionary else colour,
            "y": pa.array([r["y"] for r in rows], type=pa.int64()),
        }
    )
    pq.write_table(table, path)
    return path
