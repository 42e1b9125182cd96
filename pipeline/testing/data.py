"""Deterministic generated inputs for examples, tests and benchmarks.

``python -m pipeline.testing.data orders OUT.csv --size 100MB`` writes an orders CSV of about
that size, ``events OUT.jsonl`` a JSON Lines file of events, ``small-files DIR --count 10000``
a folder of small JSON Lines files. The same seed and size always give the same bytes. Each
kind holds a few rows a job must reject (a wrong field count, a non-number, invalid JSON).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
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
    return _write_rows(path, size, _row, seed=seed, header=ORDERS_HEADER)


_EVENT_TYPES = ["purchase", "purchase", "view", "view", "view", "signup", "refund"]
_PLANS = ["free", "pro", "team"]
_TAGS = ["[]", '["web"]', '["app", "promo"]', '["gift \\"wrapped\\""]']


def _event(rng: random.Random, event_id: int, *, invalid: bool = True) -> str:
    roll = rng.random()
    if not invalid:
        roll = max(roll, 0.0002)  # the same stream of random numbers, minus the two broken kinds
    if roll < 0.0001:
        return f'{{"id": {event_id}, "type": "purchase", "amount": }}\n'  # invalid JSON: goes to rejects
    if roll < 0.0002:
        return f'["not an object", {event_id}]\n'  # valid JSON, but not an object: rejects too
    amount = "null" if roll < 0.05 else f"{rng.randint(1, 50000) / 100:.2f}"
    city = rng.choice(_CITIES)
    tags = f', "tags": {rng.choice(_TAGS)}' if rng.random() < 0.5 else ""
    return (
        f'{{"id": {event_id}, "type": "{rng.choice(_EVENT_TYPES)}", '
        f'"ts": "2026-03-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z", '
        f'"user": {{"id": {rng.randint(1, 5000)}, "city": "{city}", "plan": "{rng.choice(_PLANS)}"}}, '
        f'"amount": {amount}{tags}}}\n'
    )


def write_events_jsonl(path: Path, size: int, *, seed: int = 7, invalid: bool = True) -> int:
    """Write a JSON Lines file of events of at least ``size`` bytes; return the number of lines.

    About 1 line in 5,000 is invalid JSON or not an object (none with ``invalid=False``: polars,
    for one, cannot skip such a line); 5% of the amounts are null.
    """
    return _write_rows(path, size, functools.partial(_event, invalid=invalid), seed=seed)


def write_small_files(folder: Path, count: int, *, size: int = 1_000, seed: int = 7) -> int:
    """Write ``count`` JSON Lines files of about ``size`` bytes each into ``folder``; return the lines.

    File names sort in the order they were written (``events-00000.jsonl`` ...).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = 0
    width = len(str(max(count - 1, 0)))
    for index in range(count):
        rows: list[str] = []
        written = 0
        while written < size:
            rows.append(_event(rng, lines + len(rows) + 1))
            written += len(rows[-1].encode())
        (folder / f"events-{index:0{width}d}.jsonl").write_text("".join(rows), encoding="utf-8")
        lines += len(rows)
    return lines


def _write_rows(path: Path, size: int, row: Callable[[random.Random, int], str], *, seed: int, header: str = "") -> int:
    rng = random.Random(seed)
    rows = 0
    written = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(header)
        while written < size:
            block = "".join(row(rng, rows + i + 1) for i in range(1_000))
            out.write(block)
            written += len(block.encode())
            rows += 1_000
    return rows


@click.command()
@click.argument("kind", type=click.Choice(["orders", "events", "small-files"]))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--size", help="Approximate size, e.g. 100MB or 1GiB (default 1MB; 1KB per file for small-files).")
@click.option("--count", default=10_000, show_default=True, help="Number of files (small-files).")
@click.option("--seed", default=7, show_default=True)
def main(kind: str, out: Path, size: str | None, count: int, seed: int) -> None:
    """Generate a deterministic input file (or, for small-files, a folder of them)."""
    nbytes = parse_size(size or ("1KB" if kind == "small-files" else "1MB"), "--size")
    if kind == "small-files":
        rows = write_small_files(out, count, size=nbytes, seed=seed)
        click.echo(f"wrote {count:,} files, {rows:,} event lines, to {out}")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = (write_orders_csv if kind == "orders" else write_events_jsonl)(out, nbytes, seed=seed)
    click.echo(f"wrote {rows:,} {kind} rows to {out}")


if __name__ == "__main__":
    main()
