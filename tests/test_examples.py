"""Every example job (examples/*.yaml) runs to completion on a copy of the examples folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.runner import run_session
from pipeline.spec import load_job

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", sorted(path.name for path in EXAMPLES.glob("*.yaml")))
def test_example_runs_to_completion(name: str, tmp_path: Path) -> None:
    folder = tmp_path / "examples"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns(".pipeline", "out"))
    result = run_session(load_job(folder / name))
    assert result.status == "complete"
    assert any(path.stat().st_size for path in (folder / "out").iterdir())


def test_jsonl_filter_keeps_the_large_purchases(tmp_path: Path) -> None:
    import json

    folder = tmp_path / "examples"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns(".pipeline", "out"))
    run_session(load_job(folder / "jsonl-filter.yaml"))
    kept = [json.loads(line) for line in (folder / "out" / "big-purchases.jsonl").read_text().splitlines()]
    events = []
    for line in (folder / "data" / "events.jsonl").read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    want = [
        {"id": e["id"], "ts": e["ts"], "user": e["user"]["id"], "city": e["user"]["city"], "amount": e["amount"]}
        for e in events
        if e["type"] == "purchase"
        and isinstance(e["amount"], float)
        and e["amount"] >= 100
        and (e["user"]["plan"] != "free" or "tags" in e)
    ]
    assert kept == want and kept
    assert len((folder / "out" / "events-rejects.csv").read_text().splitlines()) == 1 + 4
