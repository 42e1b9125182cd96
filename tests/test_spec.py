"""The job file: every mistake is one line naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import SpecError
from pipeline.spec import DEFAULT_CHECKPOINT_EVERY, CheckpointInterval, load_job, parse_duration, parse_size

GOOD = """\
name: csv-map
source: {url: data/orders.csv}
stages:
  - guest: builtin:csv-map
    config: {select: [id]}
    limits: {memory: 64MiB, call_timeout: 5s}
sink: {url: out/mapped.csv}
rejects: {url: out/rejects.csv}
checkpoint: {every: 8MiB}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_good_job_resolves_relative_paths_against_the_job_folder(tmp_path: Path) -> None:
    job = load_job(_write(tmp_path, GOOD))
    assert job.name == "csv-map"
    assert set(job.outputs) == {"rejects"}
    assert job.source.url == str(tmp_path / "data" / "orders.csv")
    assert job.sink.url == str(tmp_path / "out" / "mapped.csv")
    assert job.stages[0].guest == "builtin:csv-map"
    assert job.stages[0].limits.memory == 64 * 1024 * 1024
    assert job.stages[0].limits.call_timeout == 5.0
    assert job.checkpoint_every == CheckpointInterval(bytes=8 * 1024 * 1024)
    assert job.store == ".pipeline"


@pytest.mark.parametrize(
    ("every", "expected"),
    [
        ("8MiB", CheckpointInterval(bytes=8 << 20)),
        ("4096", CheckpointInterval(bytes=4096)),
        (4096, CheckpointInterval(bytes=4096)),
        ("1s", CheckpointInterval(seconds=1.0)),
        ("250ms", CheckpointInterval(seconds=0.25)),
        ("2min", CheckpointInterval(seconds=120.0)),
        ("1h", CheckpointInterval(seconds=3600.0)),
        ("2MB", CheckpointInterval(bytes=2_000_000)),
    ],
)
def test_checkpoint_interval_is_a_time_or_an_input_size(tmp_path: Path, every: object, expected: object) -> None:
    assert load_job(_write(tmp_path, GOOD.replace("every: 8MiB", f"every: {every}"))).checkpoint_every == expected


def test_checkpoint_interval_defaults_to_one_second(tmp_path: Path) -> None:
    job = load_job(_write(tmp_path, GOOD.replace("checkpoint: {every: 8MiB}\n", "")))
    assert job.checkpoint_every == DEFAULT_CHECKPOINT_EVERY == CheckpointInterval(seconds=1.0)
    assert not job.checkpoint_every.due(10**12, 0.999) and job.checkpoint_every.due(0, 1.0)


def test_spec_hash_ignores_checkpoint_interval_but_not_config(tmp_path: Path) -> None:
    base = load_job(_write(tmp_path, GOOD)).sha256()
    assert load_job(_write(tmp_path, GOOD.replace("8MiB", "1MiB"))).sha256() == base
    assert load_job(_write(tmp_path, GOOD.replace("[id]", "[id, name]"))).sha256() != base


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("sink:", "sinks:"), "top level: unknown key 'sinks' (did you mean 'sink'?)"),
        (GOOD.replace("name: csv-map\n", ""), "top level: missing required key 'name'"),
        (
            GOOD.replace("every: 8MiB", "every: lots"),
            "checkpoint.every: expected a time like 1s, 500ms or 2min, or an input size like 8MiB, got 'lots'",
        ),
        (
            GOOD.replace("every: 8MiB", "every: 5m"),
            "checkpoint.every: '5m' could be minutes or megabytes: write 5min, or 5MB / 5MiB",
        ),
        (GOOD.replace("every: 8MiB", "every: 5M"), "checkpoint.every: '5M' could be minutes or megabytes"),
        (GOOD.replace("every: 8MiB", "every: 0s"), "checkpoint.every: expected a finite duration like 5s"),
        (
            GOOD.replace("memory: 64MiB", "memroy: 64MiB"),
            "stages[0].limits: unknown key 'memroy' (did you mean 'memory'?)",
        ),
        (
            GOOD.replace("call_timeout: 5s", "call_timeout: soon"),
            "stages[0].limits.call_timeout: expected a finite duration",
        ),
        (GOOD.replace("{url: out/mapped.csv}", "out/mapped.csv"), "sink: expected a mapping, got str"),
        (GOOD.replace("config: {select: [id]}", "config: [id]"), "stages[0].config: expected a mapping, got list"),
        (GOOD.replace("name: csv-map", "name: ../evil"), "name: '../evil' must be letters"),
        (
            GOOD.replace("{url: out/mapped.csv}", "{url: out/m.csv, format: orc}"),
            "sink.format: expected one of raw, parquet, got 'orc'",
        ),
        (
            GOOD.replace("{url: out/mapped.csv}", "{url: 's3://b/m.csv', part_size: 1MiB}"),
            "sink.part_size: S3 parts are 5MiB to 5GiB, got 1,048,576 bytes",
        ),
        (
            GOOD.replace("{url: out/mapped.csv}", "{url: out/m.csv, part_size: 8MiB}"),
            "sink.part_size: applies to s3:// outputs only",
        ),
        (
            GOOD.replace("{url: out/mapped.csv}", "{url: out/m.parquet, format: parquet, schema: {id: integer}}"),
            "sink.schema.id: expected one of string, int64, int32, float64, float32, bool, date32, timestamp",
        ),
        (GOOD.replace("{url: out/mapped.csv}", "{url: out/m.csv, options: [a]}"), "sink.options: expected a mapping"),
        (GOOD.replace("{url: out/rejects.csv}", "{url: 'ftp://h/r.csv'}"), "rejects.url: no sink writes ftp:// URLs"),
        ("stages: [\n", "invalid YAML at line 2"),
        ("- just a list\n", "top level: expected a mapping, got list"),
    ],
)
def test_bad_jobs_are_one_line_errors_naming_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        load_job(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_output_settings_that_decide_the_bytes_are_in_the_spec_hash_and_options_are_not(tmp_path: Path) -> None:
    parquet = GOOD.replace("{url: out/mapped.csv}", "{url: 's3://b/m.parquet', format: parquet}")
    base = load_job(_write(tmp_path, parquet)).sha256()
    assert load_job(_write(tmp_path, parquet.replace("parquet}", "parquet, compression: zstd}"))).sha256() != base
    with_options = parquet.replace("parquet}", "parquet, options: {profile: etl}, part_size: 16MiB}")
    assert load_job(_write(tmp_path, with_options)).sha256() == base


def test_missing_job_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such job file"):
        load_job(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8MiB", 8 << 20), ("512 KiB", 512 << 10), ("1GiB", 1 << 30), ("1MB", 10**6), ("4096", 4096), (100, 100)],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text, "x") == expected


@pytest.mark.parametrize(("text", "expected"), [("5s", 5.0), ("500ms", 0.5), ("2m", 120.0), (3, 3.0)])
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text, "x") == expected
