"""Deterministic generated inputs for examples, tests and benchmarks.

``python -m pipeline.testing.data orders OUT.csv --size 100MB`` writes an orders CSV of about
that size. The same seed and size always give the same bytes.
"""

from __future__ import annotations

import random
from pathlib import Path

import click

from pipeline.spec import parse_size

ORDERS_HEADER = "id,name,amount,city,email,notes\n"
_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "zoë"]
_CITIES = ["Berlin", "Lisbon", "Oslo", "Paris", "Tokyo", "New York, NY", "São Paulo", "Zürich"]
_NOTES = [
    "",
    "gift",
    '"fragile, handle with care"',
    '"said ""thanks"""',
    '"two\nlines"',
    "express",
    "",
    "back order",
]


def _row(rng: random.Random, order_id: int) -> str:
    roll = rng.random()
    if roll < 0.0001:
        return f"{order_id},broken row,1\n"  # wrong field count: goes to rejects
    amount = "n/a" if roll < 0.0003 else f"{rng.randint(1, 50000) / 100:.2f}"
    name = rng.choice(_NAMES)
    city = rng.choice(_CITIES)
    city = f'"{city}"' if "," in city else city
    return f"{order_id},{name},{amount},{city},{name}{order_id % 97}@example.com,{rng.choice(_NOTES)}\n"


def write_orders_csv(path: Path, size: int, *, seed: int = 7) -> int:
    """Write an orders CSV of at least ``size`` bytes; return the number of data rows."""
    rng = random.Random(seed)
    rows = 0
    written = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(ORDERS_HEADER)
        while written < size:
            block = "".join(_row(rng, rows + i + 1) for i in range(1_000))
            out.write(block)
            written += len(block.encode())
            rows += 1_000
    return rows


@click.command()
@click.argument("kind", type=click.Choice(["orders"]))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--size", default="1MB", show_default=True, help="Approximate size, e.g. 100MB or 1GiB.")
@click.option("--seed", default=7, show_default=True)
def main(kind: str, out: Path, size: str, seed: int) -> None:
    """Generate a deterministic input file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = write_orders_csv(out, parse_size(size, "--size"), seed=seed)
    click.echo(f"wrote {rows:,} {kind} rows to {out}")


if __name__ == "__main__":
    main()
