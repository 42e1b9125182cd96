"""The job file: YAML, safe-loaded and validated into a :class:`JobSpec`.

Every problem is a one-line :class:`~pipeline.errors.SpecError` naming the file and the field
(``job.yaml: stages[0].limits.memory: expected a size like 64MiB, got 'lots'``). Relative
paths resolve against the job file's folder, so a job runs the same from any working directory.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline._fs import url_scheme
from pipeline.errors import SpecError
from pipeline.runtime import GuestLimits

DEFAULT_STORE = ".pipeline"
DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_CALL_TIMEOUT = 24 * 3600.0  # longer is "forever" for a chunk; also keeps the epoch count finite

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgt", start=1):  # k/kb = 1000, ki/kib = 1024, and so on
    _UNITS |= {_letter: 1000**_power, f"{_letter}b": 1000**_power}
    _UNITS |= {f"{_letter}i": 1024**_power, f"{_letter}ib": 1024**_power}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_BARE_M = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[mM]\s*$")
_MINUTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*min\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
GLOB_CHARS = re.compile(r"[*?\[]")
TEMPLATE_FIELDS = ("stem", "name")
"""Placeholders an output URL may use: the source file's name without / with its extension."""
_OUTPUT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_SESSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class SourceSpec:
    """Where the payload comes from: one file (``url``), or for a batch, ``patterns``."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    patterns: tuple[str, ...] = ()
    """Globs and URLs of a batch job (``url: data/*.csv`` or ``urls: [...]``): one session per file."""


@dataclass(frozen=True)
class StageSpec:
    """One guest in the chain: the module, its config and its sandbox."""

    guest: str
    """As written in the job (``builtin:csv-map`` or a path resolved against the job folder)."""
    config: dict[str, Any]
    limits: GuestLimits

    @property
    def label(self) -> str:
        return self.guest if self.guest.startswith("builtin:") else Path(self.guest).name


SINK_SCHEMES = ("file", "s3", "memory")
"""URL schemes an output may use (a plain path is ``file``)."""
SINK_FORMATS = ("raw", "parquet")
PARQUET_TYPES = ("string", "int64", "int32", "float64", "float32", "bool", "date32", "timestamp")
"""Column types a Parquet output's ``schema`` may declare."""
PARQUET_COMPRESSIONS = ("snappy", "zstd", "gzip", "none")
DEFAULT_ROW_GROUP_SIZE = 128 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part but the last
MAX_PART_SIZE = 5 * 1024**3
DEFAULT_PART_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True)
class OutputSpec:
    """Where one guest output port goes, and how it is written there."""

    url: str
    format: str = "raw"
    """``raw``: the guest's bytes as written (CSV, JSONL, HTML, ...); ``parquet``: its CSV or JSONL
    rows converted to Parquet at publish."""
    options: dict[str, Any] = field(default_factory=dict)
    """Storage options for fsspec/s3fs (``endpoint_url``, ``profile``, ...); never stored or shown."""
    schema: dict[str, str] = field(default_factory=dict)
    """Parquet column types by name; columns not named are inferred from the first rows."""
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    """Parquet rows per row group: what the conversion holds in memory at once."""
    compression: str = "snappy"
    part_size: int = DEFAULT_PART_SIZE
    """S3 multipart part size: what an ``s3://`` output buffers in memory."""

    @property
    def scheme(self) -> str:
        return url_scheme(self.url)

    def for_url(self, url: str) -> OutputSpec:
        """The same output written to another URL (a batch job's per-file output)."""
        return replace(self, url=url)

    def identity(self) -> dict[str, Any]:
        """What decides the bytes written: not the storage options or the part size."""
        return {"url": self.url, "format": self.format, "schema": self.schema} | (
            {"row_group_size": self.row_group_size, "compression": self.compression} if self.format == "parquet" else {}
        )


@dataclass(frozen=True)
class JobSpec:
    """A validated job."""

    path: Path
    name: str
    source: SourceSpec
    stages: list[StageSpec]
    sink: OutputSpec
    outputs: dict[str, OutputSpec]
    """Named guest outputs (``rejects``, ``summary``, ...) and where each goes."""
    store: str
    checkpoint_every: CheckpointInterval

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def is_batch(self) -> bool:
        """A job over a glob or a list of files, run as one session per file."""
        return bool(self.source.patterns)

    def sha256(self) -> str:
        """A hash of everything that decides the output (not the store or checkpoint interval)."""
        canonical = {
            "source": self.source.url,
            "stages": [{"guest": s.guest, "config": s.config} for s in self.stages],
            "sink": self.sink.identity(),
            "outputs": {name: out.identity() for name, out in self.outputs.items()},
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CheckpointInterval:
    """The work between two periodic checkpoints: input bytes (``8MiB``) or running time (``1s``).

    Time is the default because it is what a crash costs: at 500 MB/s a checkpoint every 8 MiB
    is sixty durable commits a second, while a slow guest or source would go minutes between
    byte-counted checkpoints.
    """

    bytes: int | None = None
    seconds: float | None = None

    def due(self, since_bytes: int, since_seconds: float) -> bool:
        """Whether a checkpoint is due after this much input and time since the last one."""
        if self.bytes is not None:
            return since_bytes >= self.bytes
        assert self.seconds is not None
        return since_seconds >= self.seconds

    @classmethod
    def parse(cls, value: Any, where: str) -> CheckpointInterval:
        """``1s`` / ``500ms`` / ``2min`` / ``1h`` -> a time; ``8MiB`` / ``4096`` -> input bytes.

        A bare ``m`` is refused: it meant megabytes here before the interval could be a time.
        """
        if isinstance(value, str) and (match := _BARE_M.match(value)):
            number = match.group(1)
            raise SpecError(
                f"{where}: {value!r} could be minutes or megabytes: write {number}min, or {number}MB / {number}MiB"
            )
        if isinstance(value, str) and (match := _MINUTES.match(value)):
            return cls(seconds=parse_duration(f"{match.group(1)}s", where) * 60)
        if isinstance(value, str) and (match := _DURATION.match(value)) and match.group(2):
            return cls(seconds=parse_duration(value, where))
        try:
            return cls(bytes=parse_size(value, where))
        except SpecError:
            raise SpecError(
                f"{where}: expected a time like 1s, 500ms or 2min, or an input size like 8MiB, got {value!r}"
            ) from None


DEFAULT_CHECKPOINT_EVERY = CheckpointInterval(seconds=1.0)


def parse_size(value: Any, where: str) -> int:
    """``8MiB`` / ``512 KiB`` / ``1GB`` / ``1048576`` -> bytes (at least 1)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(str(value)) if isinstance(value, str) else None
    unit = (match.group(2) or "").lower() if match else ""
    size = int(float(match.group(1)) * _UNITS[unit]) if match and unit in _UNITS else 0
    if size < 1:
        raise SpecError(f"{where}: expected a size of at least 1 byte like 8MiB, 512KiB or 1GiB, got {value!r}")
    return size


def parse_duration(value: Any, where: str, *, allow_zero: bool = False) -> float:
    """``5s`` / ``500ms`` / ``2m`` / ``1h`` / ``7d`` / ``10`` (seconds) -> seconds (finite)."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds is None or not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise SpecError(f"{where}: expected a finite duration like 5s, 500ms or 2m, got {value!r}")
    return seconds


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys instead of keeping the last one silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Checker:
    """Validation helpers that prefix every message with the file name."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str, hint: str | None = None) -> SpecError:
        return SpecError(f"{self.path}: {where}: {problem}", hint=hint)

    def mapping(self, value: Any, where: str, *, required: set[str], optional: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if key not in required | optional:
                known = sorted(required | optional)
                close = difflib.get_close_matches(str(key), known, n=1)
                suggestion = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
                raise self.fail(where, f"unknown key {key!r}{suggestion}")
        for key in sorted(required):
            if key not in value:
                raise self.fail(where, f"missing required key {key!r}")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"expected a non-empty string, got {_kind(value)}")
        return value

    def url(self, value: Any, where: str) -> str:
        """A URL as is, or a path (or ``file://`` URL) resolved against the job's folder."""
        text = self.string(value, where)
        if "://" in text and not text.startswith("file://"):
            return text
        path = Path(text.removeprefix("file://")).expanduser()
        return str(path if path.is_absolute() else (self.path.parent / path).resolve())

    def output_url(self, value: Any, where: str) -> str:
        """An output location: a local path, or a URL of a scheme some sink writes."""
        text = self.string(value, where)
        scheme = url_scheme(text)
        if scheme not in SINK_SCHEMES:
            supported = "local paths, " + ", ".join(f"{s}://" for s in SINK_SCHEMES if s != "file")
            raise self.fail(where, f"no sink writes {scheme}:// URLs (supported: {supported})")
        return self.url(text, where)

    def choice(self, value: Any, where: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(where, f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    def wrap(self, where: str, parse: Any, value: Any) -> Any:
        try:
            return parse(value, where)
        except SpecError as exc:
            raise SpecError(f"{self.path}: {exc.message}") from None


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a job file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such job file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read job file: {exc}") from exc
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{path}: invalid YAML{at}: {problem}") from None
    return parse_job(document, path.resolve())


def parse_job(document: Any, path: Path) -> JobSpec:
    """Validate an already-loaded job document; ``path`` anchors relative paths and messages."""
    check = _Checker(path)
    top = check.mapping(
        document,
        "top level",
        required={"name", "source", "stages", "sink"},
        optional={"rejects", "outputs", "store", "checkpoint"},
    )
    name = check.string(top["name"], "name")
    if not _SESSION_NAME.match(name):
        raise check.fail("name", f"{name!r} must be letters, digits, '.', '_' or '-' (at most 128)")

    source = _parse_source(check, top["source"])

    stages_doc = top["stages"]
    if not isinstance(stages_doc, list) or not stages_doc:
        raise check.fail("stages", "expected a non-empty list of stages")
    stages = [_parse_stage(check, doc, f"stages[{i}]") for i, doc in enumerate(stages_doc)]

    def output(doc: Any, where: str) -> OutputSpec:
        out = _parse_output(check, doc, where)
        try:
            rendered = render_output(out.url, "x/sample.csv")
        except (KeyError, ValueError, IndexError) as exc:
            fields = ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS)
            raise check.fail(f"{where}.url", f"bad placeholder {exc} (available: {fields})") from None
        if source.patterns and rendered == out.url:
            raise check.fail(f"{where}.url", "a batch job writes one output per file: use {stem} or {name} in it")
        return out

    sink = output(top["sink"], "sink")
    outputs_doc = top.get("outputs", {})
    if not isinstance(outputs_doc, dict):
        raise check.fail("outputs", f"expected a mapping of output names, got {_kind(outputs_doc)}")
    outputs = {}
    for output_name, doc in outputs_doc.items():
        if not isinstance(output_name, str) or not _OUTPUT_NAME.match(output_name) or output_name == "main":
            raise check.fail("outputs", f"{output_name!r} is not an output name (lowercase letters, digits, _ or -)")
        outputs[output_name] = output(doc, f"outputs.{output_name}")
    if "rejects" in top:
        if "rejects" in outputs:
            raise check.fail("rejects", "is also given as outputs.rejects; keep one")
        outputs["rejects"] = output(top["rejects"], "rejects")
    if not source.patterns:  # one file: fill in any placeholders now
        sink, outputs = outputs_for(path, source.url, sink, outputs)

    checkpoint = check.mapping(top.get("checkpoint", {}), "checkpoint", required=set(), optional={"every"})
    store = top.get("store", DEFAULT_STORE)
    return JobSpec(
        path=path,
        name=name,
        source=source,
        stages=stages,
        sink=sink,
        outputs=outputs,
        store=check.string(store, "store"),
        checkpoint_every=(
            check.wrap("checkpoint.every", CheckpointInterval.parse, checkpoint["every"])
            if "every" in checkpoint
            else DEFAULT_CHECKPOINT_EVERY
        ),
    )


def render_output(template: str, source_url: str) -> str:
    """An output URL for one source file: ``{stem}`` and ``{name}`` filled in."""
    name = source_url.rstrip("/").rsplit("/", 1)[-1]
    return template.format_map({"name": name, "stem": name.split(".", 1)[0] if "." in name else name})


def outputs_for(
    path: Path, source_url: str, sink: OutputSpec, outputs: dict[str, OutputSpec]
) -> tuple[OutputSpec, dict[str, OutputSpec]]:
    """The sink and outputs for one source file: placeholders filled in, and checked that none
    overwrites the source or another output (``path`` names the job file in errors)."""
    sink = sink.for_url(render_output(sink.url, source_url))
    outputs = {name: out.for_url(render_output(out.url, source_url)) for name, out in outputs.items()}
    check = _Checker(path)
    seen = {source_url: "source.url", sink.url: "sink.url"}
    if sink.url == source_url:
        raise check.fail("sink.url", "output would overwrite the source")
    for output_name, out in outputs.items():
        where = f"outputs.{output_name}.url"
        if out.url in seen:
            raise check.fail(where, f"is the same file as {seen[out.url]}; give each output its own file")
        seen[out.url] = where
    return sink, outputs


def _parse_output(check: _Checker, doc: Any, where: str) -> OutputSpec:
    doc = check.mapping(
        doc,
        where,
        required={"url"},
        optional={"format", "options", "schema", "row_group_size", "compression", "part_size"},
    )
    url = check.output_url(doc["url"], f"{where}.url")
    scheme = url_scheme(url)
    out_format = check.choice(doc.get("format", "raw"), f"{where}.format", SINK_FORMATS)
    options = doc.get("options", {})
    if not isinstance(options, dict):
        raise check.fail(f"{where}.options", f"expected a mapping of storage options, got {_kind(options)}")
    parquet_only = {"schema", "row_group_size", "compression"} & doc.keys()
    if parquet_only and out_format != "parquet":
        where = f"{where}.{min(parquet_only)}"
        raise check.fail(where, "applies to Parquet outputs only", hint="add `format: parquet`")
    schema = doc.get("schema", {})
    if not isinstance(schema, dict) or not all(isinstance(k, str) for k in schema):
        raise check.fail(f"{where}.schema", f"expected a mapping of column name to type, got {_kind(schema)}")
    for column, type_name in schema.items():
        check.choice(type_name, f"{where}.schema.{column}", PARQUET_TYPES)
    row_group_size = doc.get("row_group_size", DEFAULT_ROW_GROUP_SIZE)
    if not isinstance(row_group_size, int) or isinstance(row_group_size, bool) or row_group_size < 1:
        raise check.fail(f"{where}.row_group_size", f"expected a positive number of rows, got {row_group_size!r}")
    if "part_size" in doc and scheme != "s3":
        raise check.fail(f"{where}.part_size", "applies to s3:// outputs only")
    part_size = check.wrap(f"{where}.part_size", parse_size, doc.get("part_size", DEFAULT_PART_SIZE))
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise check.fail(f"{where}.part_size", f"S3 parts are 5MiB to 5GiB, got {part_size:,} bytes")
    return OutputSpec(
        url=url,
        format=out_format,
        options=options,
        schema=dict(schema),
        row_group_size=row_group_size,
        compression=check.choice(doc.get("compression", "snappy"), f"{where}.compression", PARQUET_COMPRESSIONS),
        part_size=part_size,
    )


def _parse_source(check: _Checker, doc: Any) -> SourceSpec:
    source_doc = check.mapping(doc, "source", required=set(), optional={"url", "urls", "options", "chunk_size"})
    if ("url" in source_doc) == ("urls" in source_doc):
        raise check.fail("source", "give exactly one of 'url' (a file or a glob) and 'urls' (a list)")
    options = source_doc.get("options", {})
    if not isinstance(options, dict):
        raise check.fail("source.options", f"expected a mapping, got {_kind(options)}")
    chunk_size = check.wrap("source.chunk_size", parse_size, source_doc.get("chunk_size", DEFAULT_CHUNK_SIZE))
    if "urls" in source_doc:
        urls = source_doc["urls"]
        if not isinstance(urls, list) or not urls:
            raise check.fail("source.urls", "expected a non-empty list of files or globs")
        patterns = tuple(check.url(u, f"source.urls[{i}]") for i, u in enumerate(urls))
        return SourceSpec(url="", options=options, chunk_size=chunk_size, patterns=patterns)
    url = check.url(source_doc["url"], "source.url")
    if GLOB_CHARS.search(url):
        return SourceSpec(url="", options=options, chunk_size=chunk_size, patterns=(url,))
    return SourceSpec(url=url, options=options, chunk_size=chunk_size)


def _parse_stage(check: _Checker, doc: Any, where: str) -> StageSpec:
    stage = check.mapping(doc, where, required={"guest"}, optional={"config", "limits"})
    guest = check.string(stage["guest"], f"{where}.guest")
    if not guest.startswith("builtin:"):
        guest = check.url(guest, f"{where}.guest")
    config = stage.get("config", {})
    if not isinstance(config, dict):
        raise check.fail(f"{where}.config", f"expected a mapping, got {_kind(config)}")
    limits_doc = check.mapping(
        stage.get("limits", {}), f"{where}.limits", required=set(), optional={"memory", "call_timeout", "fuel"}
    )
    defaults = GuestLimits()
    fuel = limits_doc.get("fuel")
    if fuel is not None and (not isinstance(fuel, int) or isinstance(fuel, bool) or fuel <= 0):
        raise check.fail(f"{where}.limits.fuel", f"expected a positive integer, got {fuel!r}")
    limits = GuestLimits(
        memory=check.wrap(f"{where}.limits.memory", parse_size, limits_doc.get("memory", defaults.memory)),
        call_timeout=min(
            MAX_CALL_TIMEOUT,
            check.wrap(
                f"{where}.limits.call_timeout", parse_duration, limits_doc.get("call_timeout", defaults.call_timeout)
            ),
        ),
        fuel=fuel,
    )
    return StageSpec(guest=guest, config=config, limits=limits)
