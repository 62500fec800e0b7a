"""``check-config --live`` against the real stand-ins: the sandbox's token endpoint and API, the embedded store.

Each failure the issue names is produced for real where a stand-in can produce it: wrong client credentials
and a bad token (the sandbox's token endpoint and API), a test the account cannot see (404 from the sandbox),
a missing bucket, a user without write permission (made through the store's IAM API), wrong AWS credentials,
unreachable endpoints (closed loopback ports). Two behaviours no stand-in has on demand, a store whose clock is
off and one that ignores ``If-None-Match``, are a tiny S3 responder on loopback speaking just enough S3.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from ut_video_assets.cli import main
from ut_video_assets.preflight import Failure
from ut_video_assets.sandbox.server import Sandbox
from ut_video_assets.sandbox.store import EmbeddedStore, StoreEndpoint, ensure_bucket, free_port

PREFIX = "usertesting/"


@pytest.fixture
def live_env(monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox, store: StoreEndpoint, tmp_path: Path) -> dict[str, str]:
    """The environment of a deployment pointed at the sandbox and the store, with a bucket of its own."""
    for name in list(os.environ):
        if name.startswith(("UT_", "AWS_")):
            monkeypatch.delenv(name)
    bucket = f"preflight-{uuid.uuid4().hex[:10]}"
    ensure_bucket(store.client(), bucket)
    env = {
        **sandbox.env(),
        **store.env(),
        "UT_VIDEO_BUCKET": bucket,
        "UT_VIDEO_PREFIX": PREFIX,
        "UT_BUDGET_PATH": str(tmp_path / "budget.sqlite"),
    }
    set_env(monkeypatch, env)
    return env


def set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def run_live(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = main(["check-config", "--live", "--timeout", "15", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_no_secret(env: dict[str, str], *texts: str) -> None:
    for name in ("UT_CLIENT_SECRET", "AWS_SECRET_ACCESS_KEY", "UT_ACCESS_TOKEN"):
        secret = env.get(name)
        if secret:
            assert all(secret not in text for text in texts), f"{name} leaked"


def api_requests(sandbox: Sandbox) -> int:
    """Requests to every Results API endpoint (the token endpoint is not metered)."""
    requests: dict[str, int] = sandbox.stats()["requests"]
    return sum(count for endpoint, count in requests.items() if endpoint != "token")


# --- success ------------------------------------------------------------------------------------------------


def test_live_check_passes_with_one_api_request_and_leaves_no_probe(
    live_env: dict[str, str], sandbox: Sandbox, store: StoreEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_live(capsys)
    assert code == 0, err
    assert "live checks OK" in out
    assert "minted from" in out
    test_id = sandbox.test_ids[0]
    completed = len(sandbox.sessions(test_id))
    assert f"test {test_id}: {completed} completed session(s); 1 request(s) from the shared budget" in out
    assert "second create-only write refused, probe deleted" in out
    assert api_requests(sandbox) == 1
    listed = store.client().list_objects_v2(Bucket=live_env["UT_VIDEO_BUCKET"])
    assert listed.get("KeyCount", 0) == 0, "the probe object was left behind"
    assert_no_secret(live_env, out, err)


def test_the_request_comes_from_the_shared_budget(
    live_env: dict[str, str], sandbox: Sandbox, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the budget's only slot taken by someone else, the check waits for it instead of sending."""
    from ut_video_assets.ratelimit import SqliteBudget

    monkeypatch.setenv("UT_RATE_LIMIT_PER_MINUTE", "1")
    monkeypatch.setenv("UT_RATE_LIMIT_WINDOW_SECONDS", "2")
    other = SqliteBudget(Path(live_env["UT_BUDGET_PATH"]), limit=1, window_seconds=2)
    try:
        other.acquire()  # another process of the pipeline just spent the window's one request
        started = time.monotonic()
        code, _out, err = run_live(capsys)
        waited = time.monotonic() - started
    finally:
        other.close()
    assert code == 0, err
    assert waited >= 1.5, f"the check did not wait for the shared budget ({waited:.2f} s)"
    assert api_requests(sandbox) == 1


# --- the Results API ------------------------------------------------------------------------------------------


def test_wrong_client_credentials(
    live_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UT_CLIENT_SECRET", "not-the-secret-" + uuid.uuid4().hex)
    code, out, err = run_live(capsys)
    assert code == Failure.API_CREDENTIALS == 10
    assert "refused the client credentials" in err
    assert "UT_CLIENT_SECRET" in err
    assert_no_secret({**live_env, "UT_CLIENT_SECRET": os.environ["UT_CLIENT_SECRET"]}, out, err)


def test_a_rejected_access_token(
    live_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("UT_CLIENT_ID")
    monkeypatch.delenv("UT_CLIENT_SECRET")
    monkeypatch.setenv("UT_ACCESS_TOKEN", "revoked-or-made-up-" + uuid.uuid4().hex)
    code, out, err = run_live(capsys)
    assert code == Failure.API_CREDENTIALS
    assert "refused the token (401)" in err
    assert_no_secret({"UT_ACCESS_TOKEN": os.environ["UT_ACCESS_TOKEN"]}, out, err)


def test_a_test_the_account_cannot_see(
    live_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown = str(uuid.uuid4())
    monkeypatch.setenv("UT_TEST_IDS", unknown)
    code, _out, err = run_live(capsys)
    assert code == Failure.TEST_ACCESS == 11
    assert unknown in err
    assert "404" in err


def allow_http_to(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str) -> None:
    """Plain http to a loopback stand-in is refused unless its host is on UT_VIDEO_URL_ALLOW_HOSTS."""
    monkeypatch.setenv("UT_VIDEO_URL_ALLOW_HOSTS", f"{env['UT_VIDEO_URL_ALLOW_HOSTS']},{url.split('/')[2]}")


def test_unreachable_results_api(
    live_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    allow_http_to(monkeypatch, live_env, closed)
    monkeypatch.setenv("UT_API_BASE_URL", closed)
    code, _out, err = run_live(capsys)
    assert code == Failure.UNREACHABLE == 14
    assert "the Results API at http://127.0.0.1:" in err


def test_unreachable_token_endpoint(
    live_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/oauth2/v1/token"
    allow_http_to(monkeypatch, live_env, closed)
    monkeypatch.setenv("UT_TOKEN_URL", closed)
    started = time.monotonic()
    code = main(["check-config", "--live", "--timeout", "3"])
    err = capsys.readouterr().err
    assert code == Failure.UNREACHABLE
    assert "the token endpoint http://127.0.0.1:" in err
    assert time.monotonic() - started < 10, "the deadline did not bound the token retries"


# --- the destination ----------------------------------------------------------------------------------------


def test_no_such_bucket(
    live_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"missing-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("UT_VIDEO_BUCKET", missing)
    code, _out, err = run_live(capsys)
    assert code == Failure.NO_BUCKET == 12
    assert f"the bucket {missing} does not exist" in err


def test_wrong_aws_secret(
    live_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + uuid.uuid4().hex)
    code, out, err = run_live(capsys)
    assert code == Failure.STORE_CREDENTIALS == 16
    assert "SignatureDoesNotMatch" in err
    assert_no_secret({"AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]}, out, err)


def test_unreachable_store(
    live_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    code, _out, err = run_live(capsys)
    assert code == Failure.UNREACHABLE
    assert "the store at http://127.0.0.1:" in err


@pytest.fixture(scope="module")
def iam_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreEndpoint]:
    """A store of its own whose IAM API takes writes, to make a user that may read but not write."""
    with EmbeddedStore(tmp_path_factory.mktemp("iam-store"), iam_writes=True) as endpoint:
        yield endpoint


def test_no_write_permission(
    live_env: dict[str, str],
    iam_store: StoreEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = live_env["UT_VIDEO_BUCKET"]
    ensure_bucket(iam_store.client(), bucket)
    iam = boto3.client(
        "iam",
        endpoint_url=iam_store.endpoint_url,
        aws_access_key_id=iam_store.access_key,
        aws_secret_access_key=iam_store.secret_key,
        region_name=iam_store.region,
    )
    user = f"reader-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    read_only = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    iam.put_user_policy(UserName=user, PolicyName="read-only", PolicyDocument=json.dumps(read_only))
    reader_env = {
        "AWS_ENDPOINT_URL": iam_store.endpoint_url,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    set_env(monkeypatch, reader_env)
    reader = boto3.client("s3", endpoint_url=iam_store.endpoint_url, region_name=iam_store.region)
    deadline = time.monotonic() + 10
    while True:  # the user's key reaches the S3 gateway a moment after IAM accepted it
        try:
            reader.list_objects_v2(Bucket=bucket, MaxKeys=1)
            break
        except reader.exceptions.ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    code, out, err = run_live(capsys)
    assert code == Failure.NO_PERMISSION == 13
    assert "no permission to write a probe object" in err
    assert "s3:PutObject" in err
    assert_no_secret(reader_env, out, err)


# --- behaviours no stand-in has on demand: a tiny S3 responder on loopback ------------------------------------


class _S3Responder(BaseHTTPRequestHandler):
    """Just enough S3 for the destination check: an empty listing, PUT always 200, DELETE 204.

    Its ``Date`` header is off by ``skew`` seconds, and it never honours ``If-None-Match``.
    """

    skew: float = 0.0
    puts: list[str]

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(time.time() + self.skew, usegmt=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        listing = (
            b'<?xml version="1.0" encoding="UTF-8"?>'
            b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix></Prefix>'
            b"<KeyCount>0</KeyCount><MaxKeys>1</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>"
        )
        self._reply(200, listing, Content_Type="application/xml")

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.puts.append(self.path)
        self._reply(200, ETag='"0123456789abcdef0123456789abcdef"')

    def do_DELETE(self) -> None:
        self._reply(204)


def _responder(skew: float) -> Iterator[tuple[str, list[str]]]:
    puts: list[str] = []
    handler = type("Responder", (_S3Responder,), {"skew": skew, "puts": puts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", puts
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def skewed_store() -> Iterator[tuple[str, list[str]]]:
    yield from _responder(skew=-3600.0)


@pytest.fixture
def unconditional_store() -> Iterator[tuple[str, list[str]]]:
    yield from _responder(skew=0.0)


def test_clock_skew(
    live_env: dict[str, str],
    skewed_store: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint, puts = skewed_store
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    code, _out, err = run_live(capsys)
    assert code == Failure.CLOCK_SKEW == 15
    # The Date header has whole seconds: 3600 s off, give or take the rounding.
    assert re.search(r"this host's clock is 360[0-2] s ahead of the store's", err), err
    assert puts == [], "nothing is written once the clocks disagree"


def test_a_store_that_ignores_conditional_writes(
    live_env: dict[str, str],
    unconditional_store: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint, puts = unconditional_store
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    code, _out, err = run_live(capsys)
    assert code == Failure.NO_CONDITIONAL_WRITES == 17
    assert "ignores conditional writes" in err
    assert len(puts) == 2


def test_the_preflight_keeps_a_longer_back_off_in_force(tmp_path: Path) -> None:
    """The preflight opens the shared budget with the pipeline's own cap (UT_MAX_BACKOFF_SECONDS): a back-off of
    20 minutes set by the pipeline under a 30-minute cap stays 20 minutes (the default cap would cut it to 15)."""
    from ut_video_assets.preflight import LiveTargets, _open_budget
    from ut_video_assets.ratelimit import SqliteBudget

    path = tmp_path / "budget.sqlite"
    pipeline = SqliteBudget(path, limit=10, window_seconds=60, max_backoff_seconds=1800)
    pipeline.back_off(1200)
    pipeline.close()
    env = {
        "UT_ACCESS_TOKEN": "t",
        "UT_TEST_IDS": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "UT_VIDEO_BUCKET": "videos",
        "UT_BUDGET_PATH": str(path),
        "UT_MAX_BACKOFF_SECONDS": "1800",
    }
    targets = LiveTargets.from_env(env)
    assert targets.budget.max_backoff_seconds == 1800
    budget = _open_budget(targets)
    try:
        assert budget.usage().backoff_remaining_seconds > 1100
    finally:
        budget.close()
