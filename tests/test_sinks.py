"""Sinks beyond local files: S3 multipart (moto), Parquet (read back by pyarrow), memory://.

The S3 tests talk to the moto server on 127.0.0.1 (tests/conftest.py); crash tests kill a real
``pipeline run`` process with SIGKILL at a commit step (pipeline/_faults.py).
"""

from __future__ import annotations

import csv
import io
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from conftest import S3_TEST_BUCKET, Bucket, S3Server
from support import DictStash, Interrupt, interrupt_at, persist, run_cli, write_job

from pipeline._faults import ENV as KILL_ENV
from pipeline.admin import remove_session
from pipeline.connectors.s3_sink import S3Sink
from pipeline.errors import ResumeMismatch, SinkError, SpecError
from pipeline.runner import run_session
from pipeline.spec import load_job
from pipeline.stores import open_store
from pipeline.testing.data import write_orders_csv

MiB = 1024 * 1024

# -- S3 ---------------------------------------------------------------------------------------


@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["manifest-committed:3", "sinks-persisted:6", "blobs-written:7", "published:1"])
def test_s3_sink_killed_with_a_tail_under_5mib_still_has_every_byte(
    kill_at: str, orders: Path, golden: dict[str, bytes], bucket: Bucket, tmp_path: Path
) -> None:
    # Checkpoints every 1 MiB of input write ~0.5 MiB of output each: every checkpoint before
    # the kill holds a tail under the 5 MiB part minimum, kept in the store, not in S3.
    job = write_job(
        tmp_path,
        source=str(orders),
        sink=bucket.output("out/mapped.csv", part_size="5MiB"),
        rejects=bucket.output("out/rejects.csv"),
    )
    killed = run_cli("run", str(job), env={KILL_ENV: kill_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_cli("run", str(job))
    assert resumed.returncode == 0, resumed.stderr
    assert bucket.read("out/mapped.csv") == golden["mapped.csv"]
    assert bucket.read("out/rejects.csv") == golden["rejects.csv"]
    assert bucket.uploads() == []
    again = run_cli("run", str(job))
    assert "already complete" in again.stdout


@pytest.mark.s3
def test_s3_sink_resumes_in_process_and_stashes_its_tail(
    orders: Path, golden: dict[str, bytes], bucket: Bucket, tmp_path: Path
) -> None:
    job = write_job(
        tmp_path, source=str(orders), sink=bucket.output("mapped.csv"), rejects=bucket.output("rejects.csv")
    )
    with pytest.raises(Interrupt):
        run_session(load_job(job), on_progress=interrupt_at(5 * MiB))
    assert sorted(bucket.uploads()) == [f"{bucket.prefix}/mapped.csv", f"{bucket.prefix}/rejects.csv"]
    with pytest.raises(bucket.client.exceptions.NoSuchKey):  # nothing visible before the commit
        bucket.read("mapped.csv")
    store = open_store(str(tmp_path / "store"))
    try:
        from pipeline.session import SessionStore

        manifest = SessionStore(store, "orders").read_head()
        assert manifest is not None
        handle = next(s["handle"] for s in manifest.sinks if s["name"] == "main")
        assert handle["tail"] and set(handle["tail"]) <= manifest.blob_ids()  # retained with the checkpoint
        assert len(handle["parts"]) > 0 or handle["length"] < 5 * MiB
    finally:
        store.close()
    result = run_session(load_job(job))
    assert result.resumed_from
    assert bucket.read("mapped.csv") == golden["mapped.csv"]
    assert bucket.read("rejects.csv") == golden["rejects.csv"]
    assert bucket.uploads() == []


@pytest.mark.s3
def test_s3_commit_is_idempotent_and_recover_finds_it_published(bucket: Bucket) -> None:
    stash = DictStash()
    data = os.urandom(6 * MiB + 123)
    sink = S3Sink(bucket.spec("x.bin", part_size=5 * MiB), "s", stash=stash)
    sink.start()
    sink.write(data[: 5 * MiB + 7])
    first = persist(sink)  # a full part went up; the 7 bytes after it are a tail in the stash
    assert len(first["parts"]) == 1 and len(first["tail"]) == 1
    sink.write(data[5 * MiB + 7 :])
    handle = persist(sink)  # under a part: a second piece of the tail
    assert len(handle["parts"]) == 1 and len(handle["tail"]) == 2 and set(handle["tail"]) <= set(stash.blobs)
    sink.commit()
    sink.commit()
    sink.close()
    assert bucket.read("x.bin") == data
    # A run killed after publishing resumes from the last checkpoint: nothing left to do.
    again = S3Sink(bucket.spec("x.bin"), "s", stash=stash)
    again.recover(handle, finished=True)
    again.commit()
    again.close()
    assert bucket.read("x.bin") == data


@pytest.mark.s3
@pytest.mark.slow
def test_s3_recover_checks_parts_beyond_the_first_listing_page(bucket: Bucket) -> None:
    # S3 lists 1,000 parts a page: a handle with more must be checked against every page.
    # (Tiny parts: S3 enforces the 5 MiB minimum only when an upload completes.)
    sink = S3Sink(bucket.spec("many.bin"), "s", stash=DictStash())
    sink.start()
    handle = persist(sink)
    sink.close()
    key = f"{bucket.prefix}/many.bin"
    for number in range(1, 1003):
        etag = bucket.client.upload_part(
            Bucket=S3_TEST_BUCKET, Key=key, UploadId=handle["upload_id"], PartNumber=number, Body=b"%d" % number
        )["ETag"]
        handle["parts"].append({"n": number, "etag": etag, "size": len(b"%d" % number)})
    handle["parts"][-1]["etag"] = '"0123456789abcdef0123456789abcdef"'  # only on the second page
    again = S3Sink(bucket.spec("many.bin"), "s", stash=DictStash())
    with pytest.raises(SinkError, match="part 1002 of the upload is not the one the checkpoint recorded"):
        again.recover(handle)
    again.close()


@pytest.mark.s3
def test_s3_part_upload_failing_on_the_uploader_thread_is_one_sink_error(bucket: Bucket) -> None:
    sink = S3Sink(bucket.spec("denied.bin", part_size=5 * MiB), "s", stash=DictStash())
    sink.start()
    bucket.server.middleware.fail_next(1, status=403, code="AccessDenied")
    sink.write(os.urandom(5 * MiB))  # a full part: it goes up on the uploader thread
    with pytest.raises(SinkError) as caught:
        persist(sink)  # the checkpoint waits for the part and meets its error
    sink.close()
    assert caught.value.message.startswith(f"sink {bucket.url('denied.bin')}: cannot upload part 1: AccessDenied")
    assert "\n" not in caught.value.message


@pytest.mark.s3
def test_s3_empty_output_is_published_as_an_empty_object(bucket: Bucket) -> None:
    sink = S3Sink(bucket.spec("empty.csv"), "s", stash=DictStash())
    sink.start()
    persist(sink)
    sink.commit()
    sink.close()
    assert bucket.read("empty.csv") == b""
    assert bucket.uploads() == []


@pytest.mark.s3
def test_s3_recover_refuses_a_part_another_run_overwrote(bucket: Bucket) -> None:
    stash = DictStash()
    sink = S3Sink(bucket.spec("y.bin", part_size=5 * MiB), "s", stash=stash)
    sink.start()
    sink.write(os.urandom(5 * MiB))
    handle = persist(sink)
    sink.close()
    bucket.client.upload_part(
        Bucket=S3_TEST_BUCKET, Key=f"{bucket.prefix}/y.bin", UploadId=handle["upload_id"], PartNumber=1, Body=b"x"
    )
    stale = S3Sink(bucket.spec("y.bin"), "s", stash=stash)
    with pytest.raises(SinkError, match="another run of this session wrote to it"):
        stale.recover(handle)
    stale.close()


@pytest.fixture
def aws_endpoint(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pipeline rm` reads storage options from the environment (manifests never hold them)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)


@pytest.mark.s3
@pytest.mark.usefixtures("aws_endpoint")
def test_fresh_and_rm_abort_the_unfinished_upload(orders: Path, bucket: Bucket, tmp_path: Path) -> None:
    job = write_job(tmp_path, source=str(orders), sink=bucket.output("m.csv"), rejects=bucket.output("r.csv"))
    with pytest.raises(Interrupt):
        run_session(load_job(job), on_progress=interrupt_at(3 * MiB))
    first = set(bucket.uploads())
    assert len(first) == 2
    with pytest.raises(Interrupt):  # --fresh: the old uploads are aborted, new ones begun
        run_session(load_job(job), fresh=True, on_progress=interrupt_at(2 * MiB))
    assert len(bucket.uploads()) == 2
    store = open_store(str(tmp_path / "store"))
    try:
        remove_session(store, "orders")  # endpoint from the environment, as `pipeline rm` would
    finally:
        store.close()
    assert bucket.uploads() == []


@pytest.mark.s3
def test_s3_source_replaced_between_runs_is_refused(orders: Path, bucket: Bucket, tmp_path: Path) -> None:
    bucket.put("in/orders.csv", orders.read_bytes())
    options = "{endpoint_url: " + bucket.server.endpoint + "}"
    job = write_job(
        tmp_path,
        source=bucket.url("in/orders.csv"),
        source_options=options,
        sink="{url: out/m.csv}",
        rejects="{url: out/r.csv}",
    )
    with pytest.raises(Interrupt):
        run_session(load_job(job), on_progress=interrupt_at(2 * MiB))
    bucket.put("in/orders.csv", orders.read_bytes()[:-10] + b"9999,x,1\n")
    with pytest.raises(ResumeMismatch, match="changed since session"):
        run_session(load_job(job))


# -- a batch over S3, killed twice --------------------------------------------------------------

BATCH_FILES = 4


@pytest.mark.s3
@pytest.mark.slow
def test_s3_glob_batch_killed_twice_reruns_to_golden_outputs_without_reprocessing(
    bucket: Bucket, tmp_path: Path
) -> None:
    inputs = {}
    for index in range(BATCH_FILES):
        buffer = tmp_path / f"day{index}.csv"
        write_orders_csv(buffer, 4_000_000, seed=100 + index)
        inputs[f"day{index}"] = buffer.read_bytes()
        bucket.put(f"incoming/day{index}.csv", inputs[f"day{index}"])
    options = "{endpoint_url: " + bucket.server.endpoint + "}"

    def batch_job(directory: Path, out: str) -> Path:
        return write_job(
            directory,
            source=bucket.url("incoming/*.csv"),
            source_options=options,
            sink=bucket.output(f"{out}/{{stem}}.csv"),
            rejects=bucket.output(f"{out}/{{stem}}-rejects.csv"),
        )

    golden_job = batch_job(tmp_path / "golden", "golden")
    assert run_cli("run", str(golden_job), "--parallel", "2").returncode == 0
    job = batch_job(tmp_path / "run", "out")
    # Each run dies after publishing its 2nd file. One process, so the kill counts every file's
    # publish (with --parallel, each worker process counts its own: test_batch.py kills a worker).
    for kill_at in ("published:2", "published:2"):
        killed = run_cli("run", str(job), env={KILL_ENV: kill_at})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    status = run_cli("status", str(job))
    assert status.returncode == 0 and "complete" in status.stdout, status.stdout
    finished_before = status.stdout.count(" complete ")
    assert 0 < finished_before < BATCH_FILES, status.stdout
    final = run_cli("run", str(job), "--parallel", "2")
    assert final.returncode == 0, final.stderr
    summary = final.stdout.strip().splitlines()[-1]
    assert f"{finished_before} already complete" in summary, final.stdout  # finished files are not rerun
    for stem in inputs:
        assert bucket.read(f"out/{stem}.csv") == bucket.read(f"golden/{stem}.csv")
        assert bucket.read(f"out/{stem}-rejects.csv") == bucket.read(f"golden/{stem}-rejects.csv")
    assert bucket.uploads() == []
    rerun = run_cli("run", str(job), "--parallel", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip().endswith(f"{BATCH_FILES} files · {BATCH_FILES} already complete"), rerun.stdout


# -- Parquet ------------------------------------------------------------------------------------


def _mapped_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_parquet_output_reads_back_equal_to_the_csv_rows(
    orders: Path, golden: dict[str, bytes], tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    job = write_job(
        tmp_path,
        source=str(orders),
        sink="{url: out/mapped.parquet, format: parquet, schema: {id: int64, amount: float64}, row_group_size: 20000}",
        rejects="{url: out/rejects.csv}",
    )
    run_session(load_job(job))
    table = pq.read_table(tmp_path / "out" / "mapped.parquet")
    expected = _mapped_rows(golden["mapped.csv"])
    assert table.column_names == ["id", "customer", "amount", "city"]
    assert str(table.schema.field("id").type) == "int64" and str(table.schema.field("amount").type) == "double"
    assert table.num_rows == len(expected)
    assert table.column("id").to_pylist() == [int(row["id"]) for row in expected]
    assert table.column("customer").to_pylist() == [row["customer"] for row in expected]
    assert table.column("amount").to_pylist() == [float(row["amount"]) for row in expected]
    assert pq.ParquetFile(tmp_path / "out" / "mapped.parquet").metadata.num_row_groups >= table.num_rows // 20000
    assert sorted(os.listdir(tmp_path / "out")) == ["mapped.parquet", "rejects.csv"]  # no staging left


def test_parquet_output_is_byte_identical_after_a_resume(orders: Path, tmp_path: Path) -> None:
    outputs = []
    for name, interrupt in (("interrupted", 4 * MiB), ("straight", None)):
        job = write_job(
            tmp_path / name,
            source=str(orders),
            sink="{url: out/mapped.parquet, format: parquet}",
            rejects="{url: out/rejects.parquet, format: parquet}",
        )
        if interrupt:
            with pytest.raises(Interrupt):
                run_session(load_job(job), on_progress=interrupt_at(interrupt))
            assert run_session(load_job(job)).resumed_from
        else:
            run_session(load_job(job))
        outputs.append([(tmp_path / name / "out" / f).read_bytes() for f in ("mapped.parquet", "rejects.parquet")])
    assert outputs[0] == outputs[1]


@pytest.mark.slow
def test_parquet_publish_killed_midway_converts_again(orders: Path, tmp_path: Path) -> None:
    straight = write_job(tmp_path / "straight", source=str(orders), sink="{url: o.parquet, format: parquet}",
                         rejects="{url: r.csv}")  # fmt: skip
    run_session(load_job(straight))
    job = write_job(tmp_path / "killed", source=str(orders), sink="{url: o.parquet, format: parquet}",
                    rejects="{url: r.csv}")  # fmt: skip
    killed = run_cli("run", str(job), env={KILL_ENV: "published:1"})
    assert killed.returncode == -signal.SIGKILL
    assert run_cli("run", str(job)).returncode == 0
    assert (tmp_path / "killed" / "o.parquet").read_bytes() == (tmp_path / "straight" / "o.parquet").read_bytes()


@pytest.mark.s3
def test_parquet_output_on_s3_resumes_and_reads_back(
    orders: Path, golden: dict[str, bytes], bucket: Bucket, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    job = write_job(
        tmp_path,
        source=str(orders),
        sink=bucket.output("lake/mapped.parquet", format="parquet"),
        rejects=bucket.output("lake/rejects.csv"),
    )
    with pytest.raises(Interrupt):
        run_session(load_job(job), on_progress=interrupt_at(4 * MiB))
    assert run_session(load_job(job)).resumed_from
    table = pq.read_table(io.BytesIO(bucket.read("lake/mapped.parquet")))
    expected = _mapped_rows(golden["mapped.csv"])
    assert table.column("customer").to_pylist() == [row["customer"] for row in expected]
    assert table.column("id").to_pylist() == [int(row["id"]) for row in expected]  # inferred int64
    assert bucket.read("lake/rejects.csv") == golden["rejects.csv"]
    keys = bucket.client.list_objects_v2(Bucket=S3_TEST_BUCKET, Prefix=f"{bucket.prefix}/lake/")["Contents"]
    assert sorted(k["Key"].rsplit("/", 1)[-1] for k in keys) == ["mapped.parquet", "rejects.csv"]  # staging gone
    assert bucket.uploads() == []


def test_parquet_row_that_does_not_fit_its_type_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id,amount,name,city\n1,200,a,x\n2,oops,b,y\n")
    job = write_job(
        tmp_path,
        source=str(tmp_path / "in.csv"),
        sink="{url: out/m.parquet, format: parquet, schema: {amount: int64}}",
        rejects="{url: out/r.csv}",
    )
    job.write_text(job.read_text().replace('filter: {column: amount, op: ">", value: 100}', "upper: [city]"))
    job.write_text(job.read_text().replace("      upper: [customer]\n", ""))
    with pytest.raises(SinkError, match=r"do not convert to Parquet.*") as caught:
        run_session(load_job(job))
    assert "\n" not in caught.value.message and "schema" in (caught.value.hint or "")


def test_jsonl_rows_convert_to_parquet(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    (tmp_path / "in.csv").write_text("id,name\n1,ann\n2,bob\n")
    (tmp_path / "job.yaml").write_text(
        "name: j\nsource: {url: in.csv}\nstages: [{guest: 'builtin:csv-to-jsonl'}]\n"
        "sink: {url: out.parquet, format: parquet}\nrejects: {url: rejects.csv}\n"
    )
    run_session(load_job(tmp_path / "job.yaml"))
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == [
        {"id": "1", "name": "ann"},
        {"id": "2", "name": "bob"},
    ] or pq.read_table(tmp_path / "out.parquet").to_pylist() == [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}]


def test_parquet_settings_are_refused_on_raw_outputs(tmp_path: Path) -> None:
    job = write_job(tmp_path, source="in.csv", sink="{url: o.csv, schema: {a: int64}}", rejects="{url: r.csv}")
    with pytest.raises(SpecError, match=r"sink\.schema: applies to Parquet outputs only"):
        load_job(job)


@pytest.mark.parametrize(
    ("output", "missing", "extra"),
    [("{url: o.parquet, format: parquet}", "pyarrow", "parquet"), ("{url: 's3://b/o.csv'}", "s3fs", "s3")],
)
def test_an_output_whose_extra_is_not_installed_says_what_to_install(
    output: str, missing: str, extra: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail
    monkeypatch.delitem(sys.modules, "pipeline.connectors.s3_sink", raising=False)
    (tmp_path / "in.csv").write_text("id\n1\n")
    job = write_job(tmp_path, source=str(tmp_path / "in.csv"), sink=output, rejects="{url: r.csv}")
    with pytest.raises(SpecError, match=rf"need an optional dependency \({missing} is missing\)") as caught:
        run_session(load_job(job))
    assert caught.value.hint == f"pip install 'wasm-pipeline[{extra}]'"


def test_unsupported_output_scheme_is_a_spec_error(tmp_path: Path) -> None:
    job = write_job(tmp_path, source="in.csv", sink="{url: 'gs://b/o.csv'}", rejects="{url: r.csv}")
    with pytest.raises(SpecError, match=r"sink\.url: no sink writes gs:// URLs \(supported: local paths, s3://"):
        load_job(job)


# -- memory:// ----------------------------------------------------------------------------------


def test_memory_sink_resumes_within_the_process(orders: Path, golden: dict[str, bytes], tmp_path: Path) -> None:
    import fsspec

    prefix = f"memory://{uuid.uuid4().hex}"
    job = write_job(
        tmp_path, source=str(orders), sink=f"{{url: '{prefix}/m.csv'}}", rejects=f"{{url: '{prefix}/r.csv'}}"
    )
    with pytest.raises(Interrupt):
        run_session(load_job(job), on_progress=interrupt_at(3 * MiB))
    fs = fsspec.filesystem("memory")
    assert not fs.exists(f"{prefix}/m.csv")
    assert run_session(load_job(job)).resumed_from
    assert fs.cat_file(f"{prefix}/m.csv") == golden["mapped.csv"]
    assert fs.cat_file(f"{prefix}/r.csv") == golden["rejects.csv"]
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(prefix, detail=False)) == ["m.csv", "r.csv"]
