"""Hosts on one machine: network namespaces joined to this one by veth pairs, and TCP relays between them.

Each host is a network namespace (``ip netns``) with a veth pair to the root namespace. Every address is inside
127.0.0.0/8, so no test traffic can leave the machine: the root end gets ``127.30.X.4n+1/30`` and the host end
``127.30.X.4n+2/30``. Linux refuses to route 127/8 over an interface unless its ``route_localnet`` is on, so it
is turned on for the root end (per interface: the root namespace's ``all`` is left as it was) and for ``all`` and
the veth inside each host. The kernel's local and main tables are merged while no policy rule is added, so the
/30 on the veth is more specific than lo's 127.0.0.0/8 and the peer's address leaves through the veth.

The services of the root namespace (PostgreSQL, the sandbox, the store) listen on 127.0.0.1 only; a `Relay`
in the root namespace listens on each host's root-end address and forwards to them. A relay can also run inside
a host's namespace (its thread joins the namespace with setns(2) before it opens any socket), e.g. to give the
host a 127.0.0.1 port that leads back over its veth. Processes run on a host through `Host.argv`: inside its
network namespace and a UTS namespace of its own, so each host has its own host name, as separate machines do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
ADDRESS_PREFIX = "127.30"


class NetnsError(RuntimeError):
    """A namespace, a veth pair or a relay could not be set up."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (not root, no ``ip`` or ``unshare``, no permission), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "hostname"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (make netns-deps installs iproute2)"
    probe = f"utv-probe-{secrets.token_hex(3)}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"`ip netns add` is not permitted here: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    """One host: a network namespace, its veth pair and its host name."""

    number: int
    namespace: str
    hostname: str
    root_if: str
    host_if: str
    root_address: str
    """The root namespace's end of the veth: what this host dials to reach the shared services."""
    host_address: str

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` run on this host: in its network namespace, under its own host name."""
        set_name = 'hostname "$0" && exec "$@"'
        return [
            "ip", "netns", "exec", self.namespace,
            "unshare", "--uts", "--", "sh", "-c", set_name, self.hostname, *command,
        ]  # fmt: skip

    def pids(self) -> list[int]:
        """The processes inside this host's network namespace (never this test process)."""
        result = _ip("netns", "pids", self.namespace, check=False)
        return [int(p) for p in result.stdout.split() if p.isdigit() and int(p) != os.getpid()]

    def kill_all(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL every process on this host, by PID, until none is left; returns the PIDs killed. Only
        processes this test started live in the namespace (it made the namespace)."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.1)
        if self.pids():
            raise NetnsError(f"processes left on host {self.hostname}: {self.pids()}")
        return killed


def _write_sysctl(namespace: str | None, name: str, value: str) -> None:
    path = f"/proc/sys/net/ipv4/conf/{name}/route_localnet"
    if namespace is None:
        Path(path).write_text(value)
        return
    command = ["ip", "netns", "exec", namespace, "sh", "-c", f"echo {value} > {path}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise NetnsError(f"could not set {path} in {namespace}: {result.stderr.strip()}")


def _free_block() -> int:
    """A third octet X such that no interface has an address in 127.30.X.0/24."""
    taken = _ip("-o", "addr", "show").stdout
    for _ in range(100):
        block = secrets.randbelow(256)
        if f" {ADDRESS_PREFIX}.{block}." not in taken:
            return block
    raise NetnsError(f"no free {ADDRESS_PREFIX}.X.0/24 block")


@dataclass
class Hosts:
    """``count`` hosts, made by `create` and removed (namespaces, veths) by `delete`, also after a failure."""

    count: int
    hosts: list[Host] = field(default_factory=list)

    def create(self) -> list[Host]:
        token = secrets.token_hex(2)
        block = _free_block()
        try:
            for n in range(1, self.count + 1):
                host = Host(
                    number=n,
                    namespace=f"utv-{token}-h{n}",
                    hostname=f"ut-host-{n}-{token}",
                    root_if=f"utv{token}h{n}r",
                    host_if=f"utv{token}h{n}",
                    root_address=f"{ADDRESS_PREFIX}.{block}.{4 * n + 1}",
                    host_address=f"{ADDRESS_PREFIX}.{block}.{4 * n + 2}",
                )
                self.hosts.append(host)
                self._connect(host)
        except BaseException:
            self.delete()
            raise
        return self.hosts

    @staticmethod
    def _connect(host: Host) -> None:
        ns = host.namespace
        _ip("netns", "add", ns)
        _ip("link", "add", host.root_if, "type", "veth", "peer", "name", host.host_if, "netns", ns)
        _ip("addr", "add", f"{host.root_address}/30", "dev", host.root_if)
        _ip("link", "set", host.root_if, "up")
        _write_sysctl(None, host.root_if, "1")
        _ip("-n", ns, "addr", "add", f"{host.host_address}/30", "dev", host.host_if)
        _ip("-n", ns, "link", "set", host.host_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        for name in ("all", host.host_if):
            _write_sysctl(ns, name, "1")
        route = _ip("-n", ns, "route", "get", host.root_address).stdout
        if f"dev {host.host_if}" not in route:
            raise NetnsError(f"{host.root_address} is not routed over {host.host_if} in {ns}: {route.strip()}")

    def delete(self) -> None:
        """Remove every namespace and veth made here (the processes inside must be gone first)."""
        errors = []
        for host in self.hosts:
            for args in (("netns", "del", host.namespace), ("link", "del", host.root_if)):
                result = _ip(*args, check=False)
                if result.returncode != 0 and "Cannot find" not in result.stderr and "No such" not in result.stderr:
                    errors.append(f"ip {' '.join(args)}: {result.stderr.strip()}")
        self.hosts.clear()
        if errors:
            raise NetnsError("; ".join(errors))

    def __enter__(self) -> list[Host]:
        return self.create()

    def __exit__(self, *_exc: object) -> None:
        self.delete()


def _join_namespace(namespace: str) -> None:
    """Move the calling thread (only) into ``namespace``'s network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NetnsError(f"setns into {namespace}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class Relay:
    """TCP forwarders on one asyncio loop in a thread of their own, in the root namespace or inside ``namespace``
    (every socket, listening or outgoing, is opened by that thread, so in that namespace). Counts the
    connections each forwarder carried, and can cut the live ones (`drop`). Use as a context manager."""

    def __init__(self, namespace: str | None = None) -> None:
        self.namespace = namespace
        self.connections: dict[tuple[str, int], int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._live: dict[tuple[str, int], set[tuple[asyncio.WriteTransport, asyncio.WriteTransport]]] = {}

    def start(self) -> Relay:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                if self.namespace is not None:
                    _join_namespace(self.namespace)
                loop = asyncio.new_event_loop()
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                ready.set()
                return
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"relay-{self.namespace or 'root'}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise NetnsError(f"relay in {self.namespace or 'the root namespace'} did not start") from failure[0]
        return self

    def forward(self, listen_host: str, target: tuple[str, int], listen_port: int = 0) -> int:
        """Listen on ``listen_host:listen_port`` (0: any free port) and forward each connection to ``target``;
        returns the port."""
        assert self._loop is not None, "the relay is not running"
        future = asyncio.run_coroutine_threadsafe(self._listen(listen_host, listen_port, target), self._loop)
        return future.result(timeout=10)

    async def _listen(self, host: str, port: int, target: tuple[str, int]) -> int:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await self._pipe(reader, writer, target)
            except asyncio.CancelledError:
                writer.transport.abort()  # the relay is stopping: the connection ends here, quietly
            finally:
                self._tasks.discard(task)

        server = await asyncio.start_server(accept, host, port)
        self._servers.append(server)
        bound = int(server.sockets[0].getsockname()[1])
        self.connections[(host, bound)] = 0
        return bound

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int]) -> None:
        local = writer.get_extra_info("sockname")
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.transport.abort()
            return
        key = (str(local[0]), int(local[1]))
        self.connections[key] = self.connections.get(key, 0) + 1
        pair = (writer.transport, up_writer.transport)
        self._live.setdefault(key, set()).add(pair)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(256 * 1024):
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                dst.transport.abort()

        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        finally:
            self._live[key].discard(pair)
            for w in (writer, up_writer):
                w.transport.abort()

    def drop(self, listen_host: str, listen_port: int) -> int:
        """Cut every live connection of the forwarder on ``listen_host:listen_port`` (both sides reset, as a
        network fault would); returns how many were cut."""
        assert self._loop is not None, "the relay is not running"

        async def cut() -> int:
            live = list(self._live.get((listen_host, listen_port), ()))
            for pair in live:
                for transport in pair:
                    transport.abort()
            return len(live)

        return asyncio.run_coroutine_threadsafe(cut(), self._loop).result(timeout=10)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None
        self._servers.clear()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def relays(namespaces: Sequence[str | None]) -> Iterator[list[Relay]]:
    """One started `Relay` per entry (None: the root namespace), all stopped afterwards."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(Relay(namespace)) for namespace in namespaces]
