"""Runs last (file order): scan everything the suite produced for credentials.

The suite's own collector keeps every record at DEBUG and up, and the run made here is captured at DEBUG too
(every logger: the HTTP stack, botocore's signing, the pipeline's children), where a pre-signed URL or token
would show first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from ut_video_assets_tests.reliability.conftest import Reliability

SIGNATURE = re.compile(rb"(?i)x-amz-signature=(?!redacted)|x-amz-credential=(?!redacted)")


class _Debug(logging.Handler):
    """Every record of every logger at DEBUG and up, rendered with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a record that cannot be rendered is kept raw
            self.lines.append(f"{record.msg!r} {record.args!r}")


@contextmanager
def _at_debug() -> Iterator[_Debug]:
    handler, root = _Debug(), logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def test_no_secret_anywhere_the_suite_left_traces(rel: Reliability) -> None:
    session = rel.new_session()  # at least one clean run, so the scan is never vacuous
    with _at_debug() as debug:
        out = rel.run(session.session_id)
    rel.assert_stored(out, session, fault="none (baseline before the scan)", injected=0)
    # `make test` spreads the suite's modules over workers: alone on its worker, this module's own runs are all
    # the suite left there; one more makes sure more than one token is looked for.
    for _ in range(3):
        if len(rel.suite.tokens) >= 2:
            break
        more = rel.new_session()
        rel.assert_stored(rel.run(more.session_id), more, fault="none (second baseline)", injected=0)

    suite = rel.suite
    secrets = {f"token#{i}": t.encode() for i, t in enumerate(suite.tokens)}
    secrets["client secret"] = suite.sandbox.client_secret.encode()
    secrets["store secret key"] = suite.store.secret_key.encode()
    assert len(suite.tokens) >= 2
    hits: list[str] = []

    def scan(where: str, blob: bytes) -> None:
        hits.extend(f"{name} in {where}" for name, value in secrets.items() if value in blob)
        if SIGNATURE.search(blob):
            hits.append(f"X-Amz-Signature in {where}")

    runs = suite.instance.get_runs()
    events = 0
    for run in runs:
        for entry in suite.instance.all_logs(run.run_id):
            events += 1
            scan(f"event log of run {run.run_id[:8]}", dg.serialize_value(entry).encode())
    files = 0
    for path in suite.home.rglob("*"):  # compute logs, run/event/schedule storage, budget: all of DAGSTER_HOME
        if path.is_file():
            files += 1
            scan(f"file {path.relative_to(suite.home)}", path.read_bytes())
    scan("Python log records", "\n".join(suite.logs.lines).encode())
    scan("DEBUG log records of the last run", "\n".join(debug.lines).encode())
    client = rel.store.client
    objects = 0
    for bucket in suite.buckets:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                objects += 1
                head = client.head_object(Bucket=bucket, Key=item["Key"])
                scan(f"metadata of {item['Key']}", repr(head.get("Metadata", {})).encode())
                if item["Key"].endswith(".json"):
                    scan(f"record {item['Key']}", client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
    suite.recorder.scan = {
        "runs": len(runs),
        "events": events,
        "dagster_home_files": files,
        "python_log_lines": len(suite.logs.lines),
        "debug_log_lines": len(debug.lines),
        "stored_objects": objects,
        "tokens_checked": len(suite.tokens),
        "hits": hits,
    }
    assert runs and events and files and suite.logs.lines and objects
    assert any(line.startswith(("httpcore", "botocore")) and " DEBUG " in line for line in debug.lines)
    assert hits == []
