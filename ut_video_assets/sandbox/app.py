"""The Results API sandbox: a Starlette app that answers like the published OpenAPI document says.

It serves the OAuth2 client-credentials token endpoint, the four Results API operations the pipeline uses
(list sessions, v3 details, transcript, video download URL) and, under ``/_sandbox``, control endpoints that
tests and other processes use to inject faults, complete sessions, revoke tokens and read counters.

Why so strict: the pipeline's client is only as good as the double it is tested against, so every rule of
docs/NOTES.md §2 is enforced (UUID checks, limit/offset bounds, one 10-per-60-s budget, 401 for a
missing/expired/revoked token, 404 and never 403), and `videoUrl` is a real SigV4 pre-signed URL of the
embedded store, reached through the fault proxy, so expiry is judged by the store itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ut_video_assets.sandbox import media
from ut_video_assets.sandbox.scenario import (
    API_FAULT_KINDS,
    DOWNLOAD_FAULT_KINDS,
    Fault,
    FaultBoard,
    SandboxConfig,
    Scenario,
    Session,
    SlidingWindow,
    Stats,
    utc_iso,
)
from ut_video_assets.sandbox.store import StoreEndpoint, ensure_bucket

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
TOKEN_PATH = "/oauth2/default/v1/token"  # noqa: S105 - a URL path, not a password
BOUNDS_MESSAGE = "Bad request. The offset must be between 0-10000 and limit must be between 1-500."
SPEC_HEADERS = {
    "Cache-Control": "private, no-store",
    "Pragma": "no-cache",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
}
JSON_TYPE = "application/json; charset=utf-8"
_REASONS = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}
_REASONS |= {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


# ------------------------------------------------------------------------------------------------------
# Tokens
# ------------------------------------------------------------------------------------------------------


class TokenStore:
    """Issued bearer tokens: JWT-shaped (the spec says ``bearerFormat: JWT``) but checked by lookup."""

    def __init__(self, issuer: str) -> None:
        self._lock = threading.Lock()
        self._key = secrets.token_bytes(32)
        self._issuer = issuer
        self._tokens: dict[str, float] = {}  # token -> expiry (epoch seconds)

    def issue(self, client_id: str, scope: str, ttl: float) -> str:
        now = time.time()
        header = {"alg": "HS256", "typ": "JWT", "kid": "sandbox"}
        claims = {
            "ver": 1,
            "jti": "AT." + secrets.token_urlsafe(16),
            "iss": self._issuer,
            "aud": "api://default",
            "iat": int(now),
            "exp": int(now + ttl),
            "cid": client_id,
            "scp": scope.split(),
            "sub": client_id,
        }
        signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
        signature = _b64(hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest())
        token = signing_input + "." + signature
        with self._lock:
            self._tokens[token] = now + ttl
        return token

    def valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and time.time() < expiry

    def revoke_all(self) -> int:
        """Forget every token issued so far (they answer 401 from now on); returns how many were live."""
        now = time.time()
        with self._lock:
            live = sum(1 for exp in self._tokens.values() if exp > now)
            self._tokens.clear()
        return live


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ------------------------------------------------------------------------------------------------------
# Pre-signed URLs
# ------------------------------------------------------------------------------------------------------


def presign_get(
    endpoint_url: str,
    bucket: str,
    key: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    expires_in: int,
    signed_at: datetime,
) -> str:
    """A SigV4 query-signed GET URL (path style) signed "at" ``signed_at``.

    boto3 always signs at the current time; this exists to make URLs that are already expired when handed
    out, which the store then rejects with its own 403 "Request has expired".
    """
    parsed = urllib.parse.urlsplit(endpoint_url)
    host = parsed.netloc
    path = "/" + urllib.parse.quote(f"{bucket}/{key}", safe="/-_.~")
    amz_date = signed_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    scope = f"{day}/{region}/s3/aws4_request"
    query = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{access_key}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(expires_in),
        "X-Amz-SignedHeaders": "host",
    }
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(query.items())
    )
    canonical_request = "\n".join(["GET", path, canonical_query, f"host:{host}", "", "host", "UNSIGNED-PAYLOAD"])
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    signing_key = ("AWS4" + secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{parsed.scheme}://{host}{path}?{canonical_query}&X-Amz-Signature={signature}"


# ------------------------------------------------------------------------------------------------------
# Shared state
# ------------------------------------------------------------------------------------------------------


class SandboxState:
    """Everything the API app, the download proxy and the control methods share."""

    def __init__(self, config: SandboxConfig, store: StoreEndpoint, clip_dir: Path) -> None:
        self.config = config
        self.store = store
        self.clip_dir = clip_dir
        self.scenario = Scenario(config)
        self.faults = FaultBoard(config.seed)
        self.stats = Stats()
        self.window = SlidingWindow(config.rate_limit, config.rate_window_seconds)
        self.tokens = TokenStore(issuer="http://127.0.0.1/oauth2/default")
        self.token_ttl: float = config.token_ttl_seconds
        self.proxy_url = ""  # set by the server once the proxy listens
        self._signer: Any = None
        self._store_client: Any = None
        self._client_lock = threading.Lock()

    # -- store access ------------------------------------------------------------------------------------
    def store_client(self) -> Any:
        with self._client_lock:
            if self._store_client is None:
                self._store_client = self.store.client()
            return self._store_client

    def _signing_client(self) -> Any:
        with self._client_lock:
            if self._signer is None:
                if not self.proxy_url:
                    raise RuntimeError("the download proxy is not running")
                signing_endpoint = StoreEndpoint(
                    endpoint_url=self.proxy_url,
                    access_key=self.store.access_key,
                    secret_key=self.store.secret_key,
                    region=self.store.region,
                )
                self._signer = signing_endpoint.client()
            return self._signer

    def clip(self, seed: int) -> bytes:
        """The clip for ``seed``, cached on disk so restarts and repeated runs skip the encoder."""
        # "speech": clips carry spoken audio (or none) since then; a cache of older tone-only clips is not reused
        path = self.clip_dir / f"clip-speech-{seed}.mp4"
        if path.exists():
            return path.read_bytes()
        # The encoder is not byte-for-byte reproducible, so the first clip written wins: a process that encoded
        # the same seed at the same time uses the stored one, and every process serves the same bytes.
        self.clip_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(media.make_clip(seed))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.read_bytes()

    def video_for(self, session: Session) -> bytes | media.PaddedVideo:
        clip = self.clip(session.video_seed)
        if session.video_size is None:
            return clip
        return media.PaddedVideo(clip, session.video_size)

    def store_video(self, session: Session) -> None:
        """Upload ``session``'s video unless an object of the right size is already there."""
        if not session.has_video:
            return
        video = self.video_for(session)
        size = len(video) if isinstance(video, bytes) else video.total_size
        client = self.store_client()
        try:
            head = client.head_object(Bucket=self.config.source_bucket, Key=session.video_key)
            if int(head["ContentLength"]) == size:
                return
        except client.exceptions.ClientError:
            pass
        media.upload_video(client, self.config.source_bucket, session.video_key, video)

    def prepare(self) -> None:
        """Create the source bucket and store every COMPLETE session's video."""
        ensure_bucket(self.store_client(), self.config.source_bucket)
        for session in self.scenario.sessions():
            self.store_video(session)

    def complete_session(
        self,
        test_id: str | None = None,
        *,
        has_video: bool = True,
        video_size: int | None = None,
        video_delay_seconds: float | None = None,
        has_transcript: bool = True,
    ) -> Session:
        """Complete a new session now: its video is stored first, then it appears at the head of the list (its
        video URL only ``video_delay_seconds`` later, when given)."""
        session = self.scenario.new_session(
            test_id,
            has_video=has_video,
            video_size=video_size,
            video_delay_seconds=video_delay_seconds,
            has_transcript=has_transcript,
        )
        self.store_video(session)
        self.scenario.publish(session)
        return session

    def video_url(self, session: Session, fault: Fault | None) -> tuple[str, datetime]:
        now = datetime.now(UTC)
        lifetime = self.config.video_url_lifetime_seconds
        if fault is not None and fault.kind == "short_url":
            lifetime = fault.lifetime_seconds
        expires_at = now + timedelta(seconds=lifetime)
        if fault is not None and fault.kind == "unsafe_url":
            # A hostile or compromised API: a URL into the cloud's metadata service, signed-looking (the
            # downloader must refuse it before connecting, and never repeat its query string).
            return "http://169.254.169.254/latest/meta-data/iam/info?X-Amz-Signature=hostile-signature", expires_at
        if fault is not None and fault.kind == "expired_url":
            url = presign_get(
                self.proxy_url,
                self.config.source_bucket,
                session.video_key,
                access_key=self.store.access_key,
                secret_key=self.store.secret_key,
                region=self.store.region,
                expires_in=lifetime,
                signed_at=now - timedelta(seconds=lifetime + 120),
            )
            # Advertise a future expiresAt, as a skewed or early-dying URL would (docs/NOTES.md §2).
            return url, expires_at
        url = self._signing_client().generate_presigned_url(
            "get_object",
            Params={"Bucket": self.config.source_bucket, "Key": session.video_key},
            ExpiresIn=lifetime,
        )
        return str(url), expires_at

    def reset(self) -> None:
        """Back to the configured behaviour: no faults, zero counters, empty rate window, configured TTL."""
        self.faults.clear()
        self.stats.reset()
        self.window.configure(self.config.rate_limit, self.config.rate_window_seconds)
        self.token_ttl = self.config.token_ttl_seconds

    def token_response(self, scope: str | None = None, ttl: float | None = None) -> dict[str, Any]:
        ttl = self.token_ttl if ttl is None else ttl
        scope = scope or self.config.scope
        self.stats.token()
        return {
            "token_type": "Bearer",
            "expires_in": int(ttl),
            "access_token": self.tokens.issue(self.config.client_id, scope, ttl),
            "scope": scope,
        }


# ------------------------------------------------------------------------------------------------------
# Responses
# ------------------------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data).encode(), status_code=status, media_type=JSON_TYPE, headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A NestJS-style error body: ``{"statusCode", "message", "error"}``."""
    body = {"statusCode": status, "message": message, "error": _REASONS.get(status, "Error")}
    return _json(body, status, {**SPEC_HEADERS, **(headers or {})})


def _rate_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(remaining), "x-ratelimit-reset": str(reset)}


Handler = Callable[[Request, SandboxState], Awaitable[Response]]


def _api(endpoint: str, handler: Handler, state: SandboxState) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a Results API handler with what every operation shares: faults, rate budget, bearer auth."""

    async def endpoint_fn(request: Request) -> Response:
        session_id = request.path_params.get("session_id")
        test_id = request.query_params.get("testId")
        accepted_at: float | None = None
        response: Response
        fault = state.faults.take({"status", "rate_limit"}, endpoint, session_id, test_id)
        if fault is not None and fault.kind == "status":
            status = fault.status or 500
            response = _error(status, _REASONS.get(status, "Server Error"))
        elif fault is not None:
            headers: dict[str, str] = {}
            if fault.retry_after:
                headers["Retry-After"] = fault.retry_after_text or str(fault.retry_after_seconds)
            if fault.reset_header:
                headers |= _rate_headers(state.window.limit, 0, fault.retry_after_seconds)
                if fault.reset_text is not None:
                    headers["x-ratelimit-reset"] = fault.reset_text
            response = _error(429, _too_many(state), headers)
        else:
            decision = state.window.acquire()
            rate = _rate_headers(decision.limit, decision.remaining, decision.reset_seconds)
            if not decision.allowed:
                response = _error(429, _too_many(state), {**rate, "Retry-After": str(decision.reset_seconds)})
            else:
                accepted_at = decision.at
                if not _authorized(request, state):
                    response = _error(
                        401, "Missing or invalid access token.", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                    )
                else:
                    response = await handler(request, state)
                    if response.status_code == 200:
                        response = _body_fault(response, endpoint, session_id, test_id, state)
                response.headers.update(rate)
        state.stats.api(endpoint, response.status_code, accepted_at=accepted_at)
        return response

    return endpoint_fn


def _too_many(state: SandboxState) -> str:
    window = state.window.window
    period = "minute" if window == 60 else f"{window:g} seconds"
    return f"Too many requests. Maximum of {state.window.limit} requests per {period}."


def _authorized(request: Request, state: SandboxState) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token) and state.tokens.valid(token.strip())


def _body_fault(
    response: Response, endpoint: str, session_id: str | None, test_id: str | None, state: SandboxState
) -> Response:
    fault = state.faults.take({"malformed_json", "html_body"}, endpoint, session_id, test_id)
    if fault is None:
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() not in {"content-length", "content-type"}}
    if fault.kind == "malformed_json":
        body = bytes(response.body)
        return Response(body[: max(1, len(body) // 2)], 200, headers=headers, media_type=JSON_TYPE)
    page = b"<!DOCTYPE html><html><head><title>Service</title></head><body><h1>Please sign in</h1></body></html>"
    return Response(page, 200, headers=headers, media_type="text/html; charset=utf-8")


# ------------------------------------------------------------------------------------------------------
# Results API operations
# ------------------------------------------------------------------------------------------------------


def _int_param(raw: str | None, default: int, low: int, high: int) -> int | None:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        return None
    if not value.is_integer() or not low <= value <= high:
        return None
    return int(value)


async def list_sessions(request: Request, state: SandboxState) -> Response:
    params = request.query_params
    test_id = params.get("testId")
    if not test_id or not UUID_RE.match(test_id):
        return _error(400, "Validation failed (uuid is expected)")
    limit = _int_param(params.get("limit"), 25, 1, 500)
    offset = _int_param(params.get("offset"), 0, 0, 10000)
    if limit is None or offset is None:
        return _error(400, BOUNDS_MESSAGE)
    if not state.scenario.has_test(test_id):
        return _error(404, "Test not found.")
    sessions = state.scenario.sessions(test_id)
    page = [s.summary() for s in sessions[offset : offset + limit]]
    total = len(sessions)
    if offset > 0 and page:
        dup = state.faults.take({"duplicate_sessions"}, "list", None, test_id)
        if dup is not None:
            page = [s.summary() for s in sessions[max(0, offset - dup.count) : offset]] + page
    if state.faults.take({"bad_session_ids"}, "list", None, test_id) is not None:
        template = page[0] if page else sessions[0].summary() if sessions else None
        if template is not None:
            page += [{**template, "sessionId": "not-a-uuid"}, {**template, "sessionId": "../../etc/passwd"}]
    lie = state.faults.take({"lying_total"}, "list", None, test_id)
    if lie is not None:
        total = max(0, total + lie.total_delta)
    body = {
        "testId": test_id,
        "sessions": page,
        "meta": {"pagination": {"limit": limit, "offset": offset, "totalCount": total}},
    }
    return _json(body, headers=SPEC_HEADERS)


def _session_or_error(request: Request, state: SandboxState, not_found: str) -> Session | Response:
    session_id = request.path_params["session_id"]
    if not UUID_RE.match(session_id):
        return _error(400, "Invalid session ID format")
    session = state.scenario.session(session_id)
    if session is None:
        return _error(404, not_found)
    return session


async def session_details(request: Request, state: SandboxState) -> Response:
    found = _session_or_error(request, state, "Session not found.")
    if isinstance(found, Response):
        return found
    return _json(state.scenario.details(found), headers=SPEC_HEADERS)


async def transcript(request: Request, state: SandboxState) -> Response:
    found = _session_or_error(request, state, "Transcript not found.")
    if isinstance(found, Response):
        return found
    if not found.has_video or not found.has_transcript:
        return _error(404, "Transcript not found.")
    duration = media.ClipSpec.for_seed(found.video_seed).duration_s
    text = state.scenario.transcript(found, duration)
    broken = state.faults.take({"transcript_body"}, "transcript", found.session_id, found.test_id)
    if broken is not None:
        text = broken.body_text
    return Response(
        text.encode(), 200, media_type="text/vtt; charset=utf-8", headers={**SPEC_HEADERS, "Accept-Ranges": "bytes"}
    )


async def video_download_url(request: Request, state: SandboxState) -> Response:
    found = _session_or_error(request, state, "Video not found.")
    if isinstance(found, Response):
        return found
    if not found.video_ready():
        return _error(404, "Video not found.")  # none, or still processing: the API says the same
    fault = state.faults.take({"expired_url", "short_url", "unsafe_url"}, "video_url", found.session_id, found.test_id)
    url, expires_at = state.video_url(found, fault)
    body = {"videoUrl": url, "sessionId": found.session_id, "expiresAt": utc_iso(expires_at)}
    return _json(body, headers=SPEC_HEADERS)


# ------------------------------------------------------------------------------------------------------
# OAuth2 token endpoint
# ------------------------------------------------------------------------------------------------------


async def token(request: Request, state: SandboxState) -> Response:
    fault = state.faults.take({"token_status"}, "token")
    if fault is not None:
        status = fault.status or 503
        headers = {"Cache-Control": "no-store"}
        if status == 429 and fault.retry_after:
            headers["Retry-After"] = fault.retry_after_text or str(fault.retry_after_seconds)
        state.stats.api("token", status, accepted_at=None)
        return _json({"errorCode": "E0000047", "errorSummary": "API call exceeded rate limit"}, status, headers)
    body = (await request.body()).decode("utf-8", "replace")
    form = {k: v[-1] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}
    client_id, client_secret = form.get("client_id"), form.get("client_secret")
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            user = password = ""
        client_id, client_secret = urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)
    oauth_headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if form.get("grant_type") != "client_credentials":
        return _json(
            {"error": "unsupported_grant_type", "error_description": "The authorization grant type is not supported."},
            400,
            oauth_headers,
        )
    cfg = state.config
    if not (
        client_id
        and client_secret
        and hmac.compare_digest(client_id, cfg.client_id)
        and hmac.compare_digest(client_secret, cfg.client_secret)
    ):
        return _json(
            {
                "error": "invalid_client",
                "error_description": "The client secret supplied for a confidential client is invalid.",
            },
            401,
            {**oauth_headers, "WWW-Authenticate": 'Basic realm="sandbox"'},
        )
    scope = form.get("scope") or cfg.scope
    if scope not in {cfg.scope, "studies:read", "public_api.read"}:
        return _json(
            {"error": "invalid_scope", "error_description": "One or more scopes are not configured."},
            400,
            oauth_headers,
        )
    return _json(state.token_response(scope), 200, oauth_headers)


# ------------------------------------------------------------------------------------------------------
# Control endpoints (not part of the OpenAPI document)
# ------------------------------------------------------------------------------------------------------


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def session_json(session: Session) -> dict[str, Any]:
    """A session as the control endpoints show it: the summary plus what the API does not reveal."""
    return {
        **session.summary(),
        "testId": session.test_id,
        "hasVideo": session.has_video,
        "videoSize": session.video_size,
        "videoKey": session.video_key,
        "videoSeed": session.video_seed,
        "videoReadyAt": utc_iso(session.video_ready_at) if session.video_ready_at else None,
        "hasTranscript": session.has_transcript and session.has_video,
    }


def control_routes(state: SandboxState) -> list[Route]:
    async def add_fault(request: Request) -> Response:
        try:
            fault = Fault.from_json(await _json_body(request))
        except (ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"id": state.faults.add(fault), **fault.to_json()}, 201)

    async def list_faults(request: Request) -> Response:
        return _json({"faults": state.faults.list()})

    async def clear_faults(request: Request) -> Response:
        state.faults.clear()
        return _json({"cleared": True})

    async def remove_fault(request: Request) -> Response:
        removed = state.faults.remove(request.path_params["fault_id"])
        return _json({"removed": removed}, 200 if removed else 404)

    async def complete(request: Request) -> Response:
        try:
            data = await _json_body(request)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        try:
            session = await run_in_threadpool(
                state.complete_session,
                data.get("testId"),
                has_video=bool(data.get("hasVideo", True)),
                video_size=data.get("videoSize"),
                video_delay_seconds=data.get("videoDelaySeconds"),
                has_transcript=bool(data.get("hasTranscript", True)),
            )
        except KeyError:
            return _json({"error": "unknown testId"}, 404)
        return _json(session_json(session), 201)

    async def sessions(request: Request) -> Response:
        test_id = request.query_params.get("testId")
        found = state.scenario.sessions(test_id, include_incomplete=True)
        return _json({"sessions": [session_json(s) for s in found]})

    async def issue_token(request: Request) -> Response:
        data = await _json_body(request)
        ttl = data.get("ttlSeconds")
        return _json(state.token_response(data.get("scope"), float(ttl) if ttl is not None else None))

    async def revoke(request: Request) -> Response:
        return _json({"revoked": state.tokens.revoke_all()})

    async def stats(request: Request) -> Response:
        return _json(state.stats.snapshot())

    async def reset_stats(request: Request) -> Response:
        state.stats.reset()
        return _json({"reset": True})

    async def rate_limit(request: Request) -> Response:
        if request.method == "DELETE":
            state.window.clear()
        else:
            data = await _json_body(request)
            state.window.configure(int(data["limit"]), float(data["windowSeconds"]))
        return _json({"limit": state.window.limit, "windowSeconds": state.window.window})

    async def token_ttl(request: Request) -> Response:
        data = await _json_body(request)
        state.token_ttl = float(data["ttlSeconds"])
        return _json({"ttlSeconds": state.token_ttl})

    async def reset(request: Request) -> Response:
        state.reset()
        return _json({"reset": True})

    async def info(request: Request) -> Response:
        return _json(
            {
                "testIds": state.scenario.test_ids,
                "sourceBucket": state.config.source_bucket,
                "proxyUrl": state.proxy_url,
                "faultKinds": sorted(API_FAULT_KINDS) + ["download:" + k for k in sorted(DOWNLOAD_FAULT_KINDS)],
            }
        )

    return [
        Route("/_sandbox", info, methods=["GET"]),
        Route("/_sandbox/faults", add_fault, methods=["POST"]),
        Route("/_sandbox/faults", list_faults, methods=["GET"]),
        Route("/_sandbox/faults", clear_faults, methods=["DELETE"]),
        Route("/_sandbox/faults/{fault_id}", remove_fault, methods=["DELETE"]),
        Route("/_sandbox/sessions", complete, methods=["POST"]),
        Route("/_sandbox/sessions", sessions, methods=["GET"]),
        Route("/_sandbox/tokens", issue_token, methods=["POST"]),
        Route("/_sandbox/tokens/revoke", revoke, methods=["POST"]),
        Route("/_sandbox/token-ttl", token_ttl, methods=["PUT"]),
        Route("/_sandbox/stats", stats, methods=["GET"]),
        Route("/_sandbox/stats", reset_stats, methods=["DELETE"]),
        Route("/_sandbox/rate-limit", rate_limit, methods=["PUT", "DELETE"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
    ]


def build_app(state: SandboxState) -> Starlette:
    """The ASGI app: token endpoint, Results API operations, control endpoints."""

    async def token_endpoint(request: Request) -> Response:
        return await token(request, state)

    routes = [
        Route(TOKEN_PATH, token_endpoint, methods=["POST"]),
        Route("/api/v2/sessionResults", _api("list", list_sessions, state), methods=["GET"]),
        Route("/api/v2/sessionResults/", _api("list", list_sessions, state), methods=["GET"]),
        Route("/api/v3/sessionResults/{session_id}", _api("details", session_details, state), methods=["GET"]),
        Route("/api/v2/sessionResults/{session_id}/transcript", _api("transcript", transcript, state), methods=["GET"]),
        Route(
            "/api/v2/sessionResults/{session_id}/videoDownloadUrl",
            _api("video_url", video_download_url, state),
            methods=["GET"],
        ),
        *control_routes(state),
    ]
    from ut_video_assets.sandbox.researcher import researcher_routes  # here: it imports this module

    routes += researcher_routes(state)  # clips, highlight reels, QX scores (issue #18)
    return Starlette(routes=routes)
