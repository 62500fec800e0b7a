"""One writer per session: a lease kept as a small object in the destination store itself.

A run that is about to write a session's video first creates ``{prefix}_leases/session_id={id}.json``
create-only (a conditional write: exactly one writer succeeds, on any number of hosts, since they all share
the store), and keeps it alive by rewriting it, conditioned on the version it wrote last, every third of its
time to live. Holding it means: nobody else writes this session's video, and every pending upload of that key
that is not ours belongs to a writer that lost or gave up its lease (a killed process), so it may be aborted.

A second run finds a live lease and fails fast with a message naming the holder (its Dagster run, host and
PID). A holder killed with SIGKILL stops renewing; once the lease has expired the next writer takes it over with
a write conditioned on the expired version (two takers cannot both win). On the holder's own host a dead PID is
seen at once, so a re-run there need not wait for the expiry. A holder whose renewal fails (its
lease was taken over after a long pause) marks the lease lost, and the engine then aborts instead of
committing. Expiry compares the holder's clock with the taker's: hosts must agree on the time to within a small
fraction of ``ttl`` (NTP does far better).

The ``_leases/`` folder starts with an underscore, which Hive-style readers (Spark, Athena, DuckDB's hive
partitioning) skip; a released lease is deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from ut_video_assets.commit import ObjectBackend, Precondition, PreconditionFailedError, StorageError

log = logging.getLogger(__name__)

LEASE_FOLDER = "_leases/"
DEFAULT_TTL_SECONDS = 120.0


# Tokens of the leases this process holds right now (any keeper): a lease object of this PID whose token is not
# here was left behind, not held.
_LIVE_TOKENS: set[str] = set()
_LIVE_LOCK = threading.Lock()


class LeaseHeldError(Exception):
    """Another live writer holds the session's lease; the message names it."""


@dataclass(frozen=True)
class Holder:
    owner: str
    """Who holds it: a Dagster run ID, or a description of a non-Dagster caller."""
    host: str
    pid: int
    token: str
    acquired_at: float
    expires_at: float

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_json(cls, body: bytes) -> Holder | None:
        try:
            data = json.loads(body)
            return cls(
                owner=str(data["owner"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                token=str(data["token"]),
                acquired_at=float(data["acquired_at"]),
                expires_at=float(data["expires_at"]),
            )
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated as expired (a crash mid-write cannot leave one, but be safe)

    def is_dead_here(self) -> bool:
        """The holder ran on this host and is gone: its process was killed, or it is this process and no live
        lease of ours carries its token (released while the store was unreachable). No need to wait for the
        expiry then. Host names are unique per machine or pod, and a pod's processes share one PID namespace."""
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            with _LIVE_LOCK:
                return self.token not in _LIVE_TOKENS
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self) -> str:
        left = self.expires_at - time.time()
        return (
            f"{self.owner} on host {self.host} (PID {self.pid}; lease renewed, expires in {left:.0f} s unless renewed)"
        )


class Lease:
    """A held lease; renewed by `LeaseKeeper` until `release`."""

    def __init__(self, backend: ObjectBackend, key: str, holder: Holder, version: str, ttl: float) -> None:
        self.backend = backend
        self.key = key
        self.holder = holder
        self.version = version
        self.ttl = ttl
        self.lost = False
        self.released = False
        self._lock = threading.Lock()

    def renew(self) -> bool:
        """Extend the lease; False (and `lost`) when someone else took it over."""
        with self._lock:
            if self.released or self.lost:
                return not self.lost
            holder = Holder(**{**self.holder.__dict__, "expires_at": time.time() + self.ttl})
            try:
                self.version = self.backend.put_bytes(
                    self.key, holder.to_json(), "application/json", precondition=Precondition.version(self.version)
                )
            except PreconditionFailedError:
                self.lost = True
                log.warning("lost the lease %s: another writer took it over", self.backend.uri(self.key))
                return False
            except StorageError as exc:
                # The store is unreachable for a moment: keep the old expiry; the next renewal tries again, and
                # the commit itself is conditional, so a real takeover can never produce two objects.
                log.warning("could not renew the lease %s: %s", self.backend.uri(self.key), exc)
                return True
            self.holder = holder
            return True

    def check(self) -> None:
        """Raise `LeaseHeldError` when the lease was lost (before committing)."""
        if self.lost or time.time() > self.holder.expires_at:
            raise LeaseHeldError(
                f"the write lease {self.backend.uri(self.key)} expired or was taken over by another run; not committing"
            )

    def release(self) -> None:
        """Delete the lease object if it is still ours (never raises)."""
        with self._lock:
            if self.released:
                return
            self.released = True
            with _LIVE_LOCK:
                _LIVE_TOKENS.discard(self.holder.token)
            if self.lost:
                return
            with contextlib.suppress(StorageError):
                self.backend.delete(self.key, version=self.version)


class LeaseKeeper:
    """Acquires session leases and renews every held one from a single background thread."""

    def __init__(self, backend: ObjectBackend, prefix: str, owner: str, ttl: float = DEFAULT_TTL_SECONDS) -> None:
        if ttl < 3:
            raise ValueError("a lease must live at least 3 seconds")
        self.backend = backend
        self.prefix = prefix
        self.owner = owner
        self.ttl = ttl
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def key_for(self, session_id: str) -> str:
        return f"{self.prefix}{LEASE_FOLDER}session_id={session_id}.json"

    def acquire(self, session_id: str) -> Lease:
        """The session's lease, or `LeaseHeldError` naming the live holder."""
        key = self.key_for(session_id)
        now = time.time()
        holder = Holder(
            owner=self.owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            token=uuid.uuid4().hex,
            acquired_at=now,
            expires_at=now + self.ttl,
        )
        try:
            version = self.backend.put_bytes(
                key, holder.to_json(), "application/json", precondition=Precondition.absent()
            )
        except PreconditionFailedError:
            version = self._take_over_expired(key, holder, session_id)
        lease = Lease(self.backend, key, holder, version, self.ttl)
        with _LIVE_LOCK:
            _LIVE_TOKENS.add(holder.token)
        with self._lock:
            self._held[key] = lease
            self._ensure_thread()
        return lease

    def _take_over_expired(self, key: str, holder: Holder, session_id: str) -> str:
        current = self.backend.get_bytes(key)
        if current is None:  # released in between: try to create it once more
            try:
                return self.backend.put_bytes(
                    key, holder.to_json(), "application/json", precondition=Precondition.absent()
                )
            except PreconditionFailedError:
                raise LeaseHeldError(f"session {session_id} is being stored by another run right now") from None
        body, version = current
        other = Holder.from_json(body)
        if other is not None and other.expires_at > time.time() and not other.is_dead_here():
            raise LeaseHeldError(f"session {session_id} is being stored by {other.describe()}; this run left it alone")
        try:
            taken = self.backend.put_bytes(
                key, holder.to_json(), "application/json", precondition=Precondition.version(version)
            )
        except PreconditionFailedError:
            raise LeaseHeldError(f"session {session_id} was just taken over by another run") from None
        log.info("took over the expired lease of session %s (from %s)", session_id, other.owner if other else "unknown")
        return taken

    def release(self, lease: Lease) -> None:
        lease.release()
        with self._lock:
            self._held.pop(lease.key, None)

    def close(self) -> None:
        """Release every lease still held and stop renewing."""
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        for lease in held:
            lease.release()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._renew_loop, name="lease-keeper", daemon=True)
            self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                held = list(self._held.values())
            for lease in held:
                lease.renew()
