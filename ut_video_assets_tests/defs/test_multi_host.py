"""The deployed configuration on three hosts: one budget, one download cap, one writer per session, and a host killed
mid-download loses nothing.

Each host is a network namespace of its own with a veth pair to this one (`ut_video_assets_tests.netns`, all
addresses in 127.0.0.0/8) and a host name of its own. PostgreSQL, the Results API sandbox, its download proxy and
the store stay in the root namespace on 127.0.0.1; a host reaches them only over its veth, through relays on the
root end's address (and, for the pre-signed video URLs, which name the proxy's 127.0.0.1 port, through a relay on
that port inside the host). Every host has its own ``DAGSTER_HOME`` holding ``deploy/dagster.yaml`` as it is, its
own spool disk, and runs ``dagster asset materialize`` run workers against the one Postgres instance, the request
budget in the same database, and the one bucket (the sessions' leases included).

What the test shows, on `test_across_processes`' deployment (the sandbox at 5 requests per 4 s, the download
pool at 2):

- the cap: while host 1 and host 3 download (both held mid-stream by the sandbox), host 2's step waits for a
  download slot;
- the lease: host 2, asked for the session host 1 is storing, fails at once naming host 1's run and host name
  and never downloads it; host 1, its connection then cut, resumes from its last good byte and stores it;
- a host killed mid-download (SIGKILL of every process on host 3 while its download is held, with an upload
  part already sent) loses nothing: what run monitoring does for a dead run worker (the run failed, its pool slot
  freed) is done here, and once its lease has expired another host takes the session over, aborts host 3's
  orphaned upload and stores it; host 3, back, removes its orphaned spool file at its next download;
- across all hosts: no 429, no window over the limit, never more than 2 downloads at once, every session stored
  once and passing both checks, no lease, pending upload or spool file left.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import pytest

from ut_video_assets.sandbox.scenario import max_in_window
from ut_video_assets.sandbox.store import StoreEndpoint
from ut_video_assets.settings import DOWNLOAD_POOL
from ut_video_assets_tests.conftest import IN_CI
from ut_video_assets_tests.defs import test_across_processes
from ut_video_assets_tests.defs.test_across_processes import (
    CHECKS,
    LIMIT,
    POOL_LIMIT,
    REPO,
    WINDOW,
    Deployment,
    _discover_everything,
    _download_intervals,
    _latest_check_status,
    _max_overlap,
)
from ut_video_assets_tests.netns import Host, Hosts, Relay, unavailable_reason

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

# test_across_processes' fixture: the deployed instance (deploy/dagster.yaml on Postgres) and its settings.
deployment = test_across_processes.deployment

HOSTS = 3
LEASE_SECONDS = 10
# How long the sandbox holds a download mid-stream: longer than the test ever lets it (it cuts or kills first).
HOLD = 900.0
# A held download is waited for this long before its host resumes it on its own: longer than the test needs.
READ_TIMEOUT_SECONDS = 180
MIB = 1024 * 1024
KILLED_SIZE = 12 * MIB  # three 5 MiB parts: the first is on its way to the store before the hold at 6 MiB
SERVICES = ("postgres", "api", "store")


@dataclass
class Rig:
    """One host and how it is set up: its env (services at its relay ports), home, spool and work folders."""

    host: Host
    env: dict[str, str]
    root: Path
    ports: dict[str, int]

    @property
    def spool(self) -> Path:
        return Path(self.env["UT_SPOOL_DIR"])


@dataclass
class Worker:
    """One ``dagster asset materialize`` process of one session on one host."""

    rig: Rig
    session_id: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def wait(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout)
        self.log.close()
        return code

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Network:
    rigs: list[Rig]
    root_relay: Relay
    workers: list[Worker] = field(default_factory=list)

    def start(self, rig: Rig, session_id: str) -> Worker:
        dagster = str(Path(sys.executable).parent / "dagster")
        args = ["asset", "materialize", "-m", "ut_video_assets.definitions", "--select", "session_video"]
        log_path = rig.root / f"{len(self.workers):02d}-{session_id}.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            rig.host.argv([dagster, *args, "--partition", session_id]),
            env=rig.env,
            cwd=rig.root / "work",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        worker = Worker(rig, session_id, process, log_path, log)
        self.workers.append(worker)
        return worker


def _rehost(url: str, address: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{address}:{port}" if userinfo else f"{address}:{port}"))


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    """Three namespaces with their veths; afterwards every process left on them is killed by PID and they are
    deleted, also when the test failed."""
    reason = unavailable_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: the multi-host test must run)")
        pytest.skip(reason)
    made = Hosts(HOSTS)
    try:
        yield made.create()
    finally:
        try:
            for host in made.hosts:
                host.kill_all()
        finally:
            made.delete()


@pytest.fixture
def network(deployment: Deployment, hosts: list[Host], tmp_path: Path) -> Iterator[Network]:
    sandbox = deployment.pipeline.sandbox
    api = urlsplit(sandbox.base_url)
    proxy = urlsplit(sandbox.proxy_url)
    store_url = deployment.env["AWS_ENDPOINT_URL"]
    store = urlsplit(store_url)
    pg = urlsplit(deployment.db_url)
    targets = {
        "postgres": (str(pg.hostname), int(pg.port or 5432)),
        "api": (str(api.hostname), int(api.port or 80)),
        "store": (str(store.hostname), int(store.port or 80)),
        "proxy": (str(proxy.hostname), int(proxy.port or 80)),
    }
    with Relay() as root_relay:
        inner: list[Relay] = []
        network = Network([], root_relay)
        try:
            for host in hosts:
                ports = {name: root_relay.forward(host.root_address, target) for name, target in targets.items()}
                relay = Relay(host.namespace).start()
                inner.append(relay)
                # The pre-signed URLs name the proxy at 127.0.0.1:<its port>: the same port on the host's own
                # loopback leads back over the veth to the root end's relay of the proxy.
                relay.forward("127.0.0.1", (host.root_address, ports["proxy"]), listen_port=targets["proxy"][1])
                root = tmp_path / f"host{host.number}"
                (root / "home").mkdir(parents=True)
                (root / "work").mkdir()
                shutil.copy(REPO / "deploy" / "dagster.yaml", root / "home" / "dagster.yaml")
                address = host.root_address
                api_url = f"http://{address}:{ports['api']}"
                env = {
                    **deployment.env,
                    "DAGSTER_HOME": str(root / "home"),
                    "DAGSTER_PG_URL": _rehost(deployment.env["DAGSTER_PG_URL"], address, ports["postgres"]),
                    "UT_API_BASE_URL": api_url,
                    "UT_TOKEN_URL": api_url + urlsplit(sandbox.token_url).path,
                    "UT_VIDEO_URL_ALLOW_HOSTS": f"{address}:{ports['api']},{proxy.netloc}",
                    "AWS_ENDPOINT_URL": f"http://{address}:{ports['store']}",
                    "UT_SPOOL_DIR": str(root / "spool"),
                    "UT_LEASE_SECONDS": str(LEASE_SECONDS),
                    "UT_DOWNLOAD_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT_SECONDS),
                }
                network.rigs.append(Rig(host, env, root, ports))
            yield network
        finally:
            for worker in network.workers:
                if worker.process.poll() is None:
                    worker.rig.host.kill_all()
                    worker.process.wait(30)
                worker.log.close()
            for relay in inner:
                relay.stop()


def _held_by(lease: dict[str, Any] | None, rig: Rig) -> dict[str, Any] | None:
    return lease if lease is not None and lease["host"] == rig.host.hostname else None


def _wait_for(what: str, condition: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"gave up waiting for {what}")


def _pool_waits(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether the run's step has logged that it waits for a download slot."""
    return any(
        f"blocked by limit for pool {DOWNLOAD_POOL}" in (entry.user_message or "")
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
    )


def _loopback_answers(rig: Rig, ports: list[int]) -> list[int]:
    """Which of ``ports`` answer on 127.0.0.1 inside the host (none should: its loopback is its own)."""
    code = (
        "import socket, sys\n"
        "for port in map(int, sys.argv[1:]):\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=3).close()\n"
        "        print(port)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    argv = rig.host.argv([sys.executable, "-c", code, *map(str, ports)])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return [int(line) for line in result.stdout.split()]


def _history(instance: dg.DagsterInstance, network: Network, session_id: str, records: list[Any]) -> str:
    """What became of a session: each materialization's outcome and run, each run's step events and host log."""
    lines = [f"session {session_id}:"]
    for record in records:
        event = record.event_log_entry
        outcome = record.asset_materialization.metadata.get("outcome") if record.asset_materialization else None
        lines.append(f"  materialized by run {event.run_id} at {event.timestamp:.1f}: {outcome}")
    for run in _runs_of(instance, session_id):
        lines.append(f"  run {run.run_id}: {run.status.value}")
        for entry in instance.all_logs(run.run_id):
            kind = entry.dagster_event.event_type_value if entry.dagster_event else "log"
            lines.append(f"    {entry.timestamp:.1f} {kind} {(entry.user_message or '')[:300]}")
    for worker in network.workers:
        if worker.session_id == session_id:
            lines.append(f"  host {worker.rig.host.number} ({worker.log_path.name}):\n{worker.output[-4000:]}")
    return "\n".join(lines)


def _runs_of(instance: dg.DagsterInstance, session_id: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(tags={"dagster/partition": session_id})))


def test_three_hosts_share_budget_cap_and_leases_and_survive_a_killed_host(
    deployment: Deployment, network: Network, store: StoreEndpoint
) -> None:
    pipeline, instance = deployment.pipeline, deployment.pipeline.instance
    sandbox, videos = pipeline.sandbox, pipeline.store
    h1, h2, h3 = network.rigs
    s3 = store.client()
    bucket = deployment.env["UT_VIDEO_BUCKET"]
    test_id = sandbox.test_ids[0]
    started = time.monotonic()

    # A host cannot reach the shared services at their own address: only through its veth.
    shared = [
        int(urlsplit(url).port or 0)
        for url in (deployment.db_url, sandbox.base_url, deployment.env["AWS_ENDPOINT_URL"])
    ]
    for rig in network.rigs:
        assert _loopback_answers(rig, shared) == [], rig.host

    killed_session = sandbox.complete_session(test_id, video_size=KILLED_SIZE).session_id
    discovered = _discover_everything(pipeline)
    with_video = {s.session_id: s.test_id for s in sandbox.sessions(test_id) if s.has_video}
    assert set(with_video) <= set(discovered) and killed_session in with_video
    contested = next(s for s in with_video if s != killed_session)
    rest = [s for s in with_video if s not in (contested, killed_session)][:2]
    assert len(rest) == 2
    sessions = [contested, killed_session, *rest]

    def lease(session_id: str) -> dict[str, Any] | None:
        try:
            body = s3.get_object(Bucket=bucket, Key=f"ut/_leases/session_id={session_id}.json")["Body"].read()
        except s3.exceptions.NoSuchKey:
            return None
        return dict(json.loads(body))

    # --- Two downloads held mid-stream fill the pool: host 1's and host 3's --------------------------------
    # The sandbox holds each download after its first bytes (the contested one) or its first 6 MiB (the large
    # one, whose first 5 MiB part is then on its way to the store), longer than the test ever waits: host 1's
    # hold ends when the test cuts its connection, host 3's when host 3 is killed.
    sandbox.add_fault(kind="stall", endpoint="download", session_id=contested, after_bytes=1024, stall_seconds=HOLD)
    sandbox.add_fault(kind="stall", endpoint="download", session_id=killed_session, after_bytes=6 * MIB,
                      stall_seconds=HOLD)  # fmt: skip
    first = network.start(h1, contested)
    doomed = network.start(h3, killed_session)
    video_key = videos.video_key(with_video[killed_session], killed_session)

    def killed_upload_started() -> bool:
        uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=video_key).get("Uploads", [])
        return bool(uploads) and _held_by(lease(killed_session), h3) is not None

    holder = _wait_for("host 1's lease", lambda: _held_by(lease(contested), h1))
    _wait_for("host 1's download", lambda: sandbox.stats()["downloadRequests"].get(contested))
    _wait_for("host 3's first part of the large video", killed_upload_started)
    assert list(h3.spool.glob("*.part")), "host 3 has no spool file mid-download"

    # --- The cap across hosts: host 2's step waits for a slot while hosts 1 and 3 download -----------------
    second = network.start(h2, contested)
    waiting = _wait_for(
        "host 2's run to wait for a download slot",
        lambda: next(
            (r for r in _runs_of(instance, contested) if r.run_id != holder["owner"].removeprefix("run ")
             and _pool_waits(instance, r.run_id)),
            None,
        ),
    )  # fmt: skip

    # --- Host 3 dies mid-download ----------------------------------------------------------------------------
    killed = h3.host.kill_all()
    assert doomed.process.pid in killed
    assert doomed.wait() < 0
    # What run monitoring does for a run worker found dead (on Kubernetes: its pod is gone): fail the run, and
    # after free_slots_after_run_end_seconds free the pool slot its step still holds.
    (dead_run,) = (r for r in _runs_of(instance, killed_session) if r.status == dg.DagsterRunStatus.STARTED)
    claimed = instance.event_log_storage.get_concurrency_info(DOWNLOAD_POOL).claimed_slots
    assert {slot.run_id for slot in claimed} == {dead_run.run_id, holder["owner"].removeprefix("run ")}
    instance.report_run_failed(dead_run, f"run worker on host {h3.host.hostname} is gone (killed)")
    instance.event_log_storage.free_concurrency_slots_for_run(dead_run.run_id)
    freed_at = time.time()
    dead_lease = lease(killed_session)
    assert dead_lease is not None and dead_lease["host"] == h3.host.hostname
    # Host 1 and host 3 (back) take one more session each meanwhile: their steps wait for slots too.
    others = [network.start(h1, rest[0]), network.start(h3, rest[1])]

    # --- One writer per session: host 2, given the freed slot, finds host 1's lease and leaves the session alone
    assert second.wait() != 0, second.output[-3000:]
    assert f"being stored by {holder['owner']} on host {h1.host.hostname}" in second.output, second.output[-3000:]
    assert first.process.poll() is None
    assert waiting.run_id in second.output
    # Host 1's held connection is cut: it resumes from its last good byte and stores the session.
    assert network.root_relay.drop(h1.host.root_address, h1.ports["proxy"]) == 1
    assert first.wait() == 0, first.output[-3000:]

    # --- Another host stores the killed host's session ------------------------------------------------------
    # Another host's lease is taken over once it has expired (the hosts' clocks agree, as NTP makes them).
    _wait_for("the killed host's lease to expire", lambda: time.time() > dead_lease["expires_at"] + 1)
    takeover = network.start(h2, killed_session)
    for worker in [*others, takeover]:
        assert worker.wait() == 0, f"host {worker.rig.host.number}, {worker.session_id}:\n{worker.output[-3000:]}"
    assert "aborted 1 unfinished upload(s) left by an earlier run" in takeover.output, takeover.output[-3000:]

    # The budget: not one 429 and never more than LIMIT requests in any WINDOW, from three hosts.
    stats = sandbox.stats()
    assert stats["rateLimited"] == 0
    assert max_in_window(stats["acceptedTimes"], WINDOW) <= LIMIT
    assert len(stats["acceptedTimes"]) > LIMIT
    # Host 2 never asked for the contested session's video: host 1's download and its resume only.
    assert stats["downloadRequests"].get(contested) == 2

    # The download cap: never more than POOL_LIMIT session_video steps at once across the hosts (the killed
    # step counted until its slot was freed); no slot is left claimed.
    runs = [r for r in instance.get_runs() if r.tags.get("dagster/partition") in sessions]
    finished = [r.run_id for r in runs if r.run_id != dead_run.run_id]
    intervals = _download_intervals(instance, finished)
    dead_start = min(
        e.timestamp
        for e in instance.all_logs(dead_run.run_id, of_type=dg.DagsterEventType.STEP_START)
        if e.dagster_event is not None and e.dagster_event.step_key == "session_video"
    )
    assert _max_overlap([*intervals, (dead_start, freed_at)]) <= POOL_LIMIT
    assert not instance.event_log_storage.get_concurrency_info(DOWNLOAD_POOL).claimed_slots

    # Every session stored once and checked; nothing left behind: no lease, no pending upload, no spool file.
    for session_id in sessions:
        stored = videos.head_video(test_id, session_id)
        assert stored is not None and stored.sha256, session_id
        for check in CHECKS:
            assert _latest_check_status(instance, check, session_id) == "SUCCEEDED", (session_id, check)
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("session_video"), asset_partitions=[session_id]), limit=10
        ).records
        # Stored once: one materialization that downloaded; a later run of the same partition (a retry on a
        # loaded machine) finds it stored and says so ("already_stored") without downloading again.
        outcomes = [
            str(r.asset_materialization.metadata["outcome"].value) if r.asset_materialization else "?" for r in records
        ]
        downloaded = [o for o in outcomes if o != "already_stored"]
        assert len(downloaded) == 1, _history(instance, network, session_id, list(records))
    assert not s3.list_objects_v2(Bucket=bucket, Prefix="ut/_leases/").get("Contents")
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    for rig in network.rigs:
        assert not list(rig.spool.glob("*.part")), f"spool files left on host {rig.host.number}"

    # Every host reached every shared service over its own veth.
    for rig in network.rigs:
        for name in SERVICES:
            assert network.root_relay.connections[(rig.host.root_address, rig.ports[name])] > 0, (rig.host, name)
    print(f"{len(sessions)} sessions on {HOSTS} hosts in {time.monotonic() - started:.0f} s")
