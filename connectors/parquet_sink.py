"""Rows a guest writes as CSV or JSON Lines, published as one Parquet file (``format: parquet``).

Guarantee: **exactly-once**, inherited from the sink that stages the rows. While the session
runs, the guest's bytes go unchanged to a staging output beside the target
(``.NAME~SESSION.rows``) through the sink its URL calls for (local file, ``s3://`` multipart
upload, ``memory://``), so checkpoints, recovery and fencing are that sink's. :meth:`commit`
publishes the staged rows, converts them in one streaming pass (pyarrow's CSV or JSON reader
block by block, row groups of ``row_group_size`` rows) into the target, which appears
atomically (locally a rename; remotely a local spool file uploaded whole, and an S3 object
exists only once its upload completes), and then removes the staging copy. Every step can be
repeated: a commit interrupted anywhere converts again from the staged rows, which are
byte-identical, into the same Parquet bytes.

Columns come from the CSV header or the JSON keys; types are the job's ``schema:`` where given
and otherwise inferred from the first block of rows (pyarrow's rules). A later row that does not
fit an inferred type stops the publish with a message naming the column; declaring it fixes it.
Staged rows starting with ``{`` are read as JSON Lines, anything else as CSV with a header.
Memory: one read block (1 MiB) plus one row group.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline._fs import fsync_dir
from pipeline.connectors.base import Sink, Stash, open_sink
from pipeline.errors import SinkError, SinkGone
from pipeline.spec import OutputSpec

_BLOCK_SIZE = 1024 * 1024  # larger blocks raised the reader's steady-state RSS (4 MiB: ~145 MiB, 1 MiB: ~100)


class ParquetSink:
    """An exactly-once Parquet output over a staging sink of raw rows."""

    def __init__(self, spec: OutputSpec, session: str, *, stash: Stash | None) -> None:
        self.url = spec.url
        self.spec = spec
        directory, _, name = spec.url.rpartition("/")
        self.rows_url = f"{directory}/.{name}~{session}.rows"
        self.tmp_name = f".{name}~{session}.tmp"
        self._rows: Sink = open_sink(replace(spec, url=self.rows_url, format="raw"), session, stash=stash)
        # Its own instance, not fsspec's cached one, so close() can close it (an s3fs client holds
        # connections). Not the staging sink's client: that one leaves retrying to its caller.
        self._fs, self._target = fsspec.core.url_to_fs(spec.url, skip_instance_cache=True, **spec.options)
        self._rows_path = self._fs._strip_protocol(self.rows_url)  # beside the target, same filesystem
        self._published = False
        self._length: int | None = None  # set when recovery finds the output already published

    @property
    def length(self) -> int:
        return self._rows.length if self._length is None else self._length

    def acquire(self, *, wait: bool = False) -> None:
        """Hold the staging output (its sink's fencing)."""
        self._rows.acquire(wait=wait)

    def start(self) -> None:
        """Begin a fresh session: empty staged rows."""
        self._rows.start()

    def recover(self, handle: dict[str, Any], *, finished: bool = False) -> None:
        """Resume the staged rows from a handle, or (``finished``) find the Parquet file published."""
        if finished and not self._rows_exist() and self._fs.exists(self._target):
            try:
                self._rows.recover(handle, finished=True)
            except SinkGone:
                # Staged rows gone and the target present after the last checkpoint: the commit
                # converted them and removed them before the run could record that it had. (Only
                # "gone": a failure to look, e.g. an S3 error, must not pass for "published".)
                self._published, self._length = True, int(handle["length"])
                self._rows.discard(handle)  # whatever is left of the staging sink
            return
        self._rows.recover(handle, finished=finished)

    def write(self, data: memoryview | bytes) -> None:
        """Stage bytes of CSV or JSON Lines rows."""
        self._rows.write(data)

    def flush(self) -> None:
        """The staging sink's flush."""
        self._rows.flush()

    def sync(self) -> dict[str, Any]:
        """The staging sink's sync: the handle is the staging sink's."""
        return self._rows.sync()

    def commit(self) -> None:
        """Publish the staged rows, convert them into the target, remove them. Idempotent."""
        if self._published:
            return
        self._rows.commit()
        self._convert()
        self._remove_rows()
        self._published = True

    def discard(self, handle: dict[str, Any] | None = None) -> None:
        """Throw away the staged rows (in progress or published) and any half-written file."""
        self._rows.discard(handle)
        self._remove_rows()
        if isinstance(self._fs, LocalFileSystem):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(Path(self._target).with_name(self.tmp_name))

    def close(self) -> None:
        """Close the staging sink and this sink's filesystem client; safe twice."""
        self._rows.close()
        if "s3" in _protocols(self._fs):
            from pipeline.stores.s3 import close_client  # s3fs is installed: it made self._fs

            with contextlib.suppress(Exception):
                close_client(self._fs)

    # -- conversion -----------------------------------------------------------------------
    def _rows_exist(self) -> bool:
        return bool(self._fs.exists(self._rows_path))

    def _remove_rows(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(self._rows_path)

    def _convert(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        local = isinstance(self._fs, LocalFileSystem)
        tmp = Path(self._target).with_name(self.tmp_name) if local else None
        try:
            with self._fs.open(self._rows_path, "rb") as staged, _output(self._fs, self._target, tmp) as out:
                reader = _open_rows(staged, self.spec.schema)
                writer = pq.ParquetWriter(out, reader.schema, compression=self.spec.compression)
                pending: list[Any] = []
                rows = 0
                for batch in reader:
                    pending.append(batch)
                    rows += batch.num_rows
                    if rows >= self.spec.row_group_size:
                        writer.write_table(pa.Table.from_batches(pending), row_group_size=self.spec.row_group_size)
                        pending, rows = [], 0
                if pending:
                    writer.write_table(pa.Table.from_batches(pending), row_group_size=self.spec.row_group_size)
                writer.close()
        except pa.ArrowException as exc:  # ArrowInvalid (parse, cast) and its kin: all one-line errors
            raise SinkError(
                f"sink {self.url}: the rows do not convert to Parquet: {_first_line(exc)}",
                hint="declare the column's type under `schema:` on this output (e.g. `schema: {amount: float64}`)",
            ) from exc
        except OSError as exc:
            raise SinkError(f"sink {self.url}: cannot write the Parquet file: {exc}") from exc
        if tmp is not None:
            os.replace(tmp, self._target)
            fsync_dir(tmp.parent)


@contextlib.contextmanager
def _output(fs: Any, target: str, tmp: Path | None) -> Any:
    """Where the Parquet bytes go: a temporary file renamed by the caller (local), or a spool
    file uploaded once it is whole (remote): a failed conversion leaves nothing at the target."""
    if tmp is None:
        with tempfile.NamedTemporaryFile(prefix="pipeline-", suffix=".parquet") as spool:
            yield spool
            spool.flush()
            fs.put_file(spool.name, target)  # an S3 object appears only when its upload completes
        return
    with open(tmp, "wb") as file:
        yield file
        file.flush()
        os.fsync(file.fileno())


def _open_rows(staged: Any, schema: dict[str, str]) -> Any:
    """A streaming record batch reader over staged CSV or JSON Lines, with declared types."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.json as pa_json

    types = {name: _arrow_type(type_name) for name, type_name in schema.items()}
    head = staged.read(64)
    staged.seek(0)
    if not head.strip():
        return pa.RecordBatchReader.from_batches(pa.schema(list(types.items())), [])
    if head.lstrip().startswith(b"{"):
        return pa_json.open_json(
            staged,
            read_options=pa_json.ReadOptions(block_size=_BLOCK_SIZE),
            parse_options=pa_json.ParseOptions(
                explicit_schema=pa.schema(list(types.items())), unexpected_field_behavior="infer"
            ),
        )
    return pa_csv.open_csv(
        staged,
        read_options=pa_csv.ReadOptions(block_size=_BLOCK_SIZE),
        convert_options=pa_csv.ConvertOptions(column_types=types),
    )


def _arrow_type(name: str) -> Any:
    import pyarrow as pa

    return {
        "string": pa.string(),
        "int64": pa.int64(),
        "int32": pa.int32(),
        "float64": pa.float64(),
        "float32": pa.float32(),
        "bool": pa.bool_(),
        "date32": pa.date32(),
        "timestamp": pa.timestamp("us"),
    }[name]


def _protocols(fs: Any) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
