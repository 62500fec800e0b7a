"""``ut-video-assets``: run the local stand-ins, the demo and the dev stack; check the configuration.

    ut-video-assets store          the embedded S3 store, until Ctrl-C
    ut-video-assets sandbox        store + Results API sandbox, until Ctrl-C
    ut-video-assets demo           store + sandbox + dagster-daemon; ingests a small scenario and exits
    ut-video-assets dev            store + sandbox + dagster dev (UI), sessions keep completing, until Ctrl-C
    ut-video-assets metrics        serve Prometheus metrics read from the Dagster instance ($DAGSTER_HOME)
    ut-video-assets check-config   validate this environment's pipeline settings (exit 2 on error);
                                   --live also proves the credentials, a watched test and the bucket
                                   (exit 10-19 per failure, `ut_video_assets.preflight.Failure`)

The first four run the local stand-ins and need the ``sandbox`` extra (``pip install
'ut-video-assets[sandbox]'``); without it they say so and exit 3.

The stand-ins' credentials are printed on purpose: they exist only on this host. ``check-config`` never
prints a secret.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ut_video_assets.settings import Settings, SettingsError

if TYPE_CHECKING:
    from ut_video_assets.sandbox.stack import StackOptions

EXIT_CONFIG_ERROR = 2
EXIT_MISSING_EXTRA = 3
"""A stand-in command (store, sandbox, demo, dev) without the ``sandbox`` extra installed."""
SANDBOX_COMMANDS = frozenset({"store", "sandbox", "demo", "dev"})


def _needs_sandbox(command: str, func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``func``, preceded by a check that the stand-ins' dependencies (the ``sandbox`` extra) are installed."""

    def run(args: argparse.Namespace) -> int:
        from ut_video_assets.sandbox.extra import missing_message

        message = missing_message(command)
        if message:
            print(message, file=sys.stderr)
            return EXIT_MISSING_EXTRA
        return func(args)

    return run


def check_config(env: Mapping[str, str]) -> list[str]:
    """Validate every pipeline setting in ``env`` against the specification; returns human-readable lines, raises
    `SettingsError` naming the first bad variable."""
    settings = Settings(env)
    settings.check()
    credentials = settings.credentials()
    budget = settings.request_budget()
    auth = "access token" if credentials.access_token else f"client credentials ({credentials.token_url})"
    endpoint = env.get("AWS_ENDPOINT_URL") or "AWS default endpoint"
    test_ids = settings.test_ids()
    return [
        f"Results API:  {settings.api_base_url()}, {auth}",
        f"Tests:        {len(test_ids)} ({', '.join(test_ids)})",
        f"Destination:  s3://{settings.bucket()}/{settings.prefix()} via {endpoint}",
        f"Rate limit:   {budget.limit} requests per {budget.window_seconds:g} s; discovery every "
        f"{settings.integer('UT_SENSOR_INTERVAL_SECONDS')} s; "
        f"at most {settings.integer('UT_MAX_CONCURRENT_DOWNLOADS')} downloads at once",
        f"Budget:       {budget.store.describe()}",
    ]


# --------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        lines = check_config(os.environ)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print("configuration OK")
    for line in lines:
        print(f"  {line}")
    if not args.live:
        return 0
    from ut_video_assets.preflight import LiveTargets, PreflightError, run_live_checks

    print("live checks (one Results API request from the shared budget, one probe object written and deleted):")
    try:
        run_live_checks(LiveTargets.from_env(os.environ), timeout=args.timeout, echo=lambda line: print(f"  {line}"))
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except PreflightError as exc:
        print(f"live check failed ({exc.failure.name}, exit {int(exc.failure)}): {exc}", file=sys.stderr)
        return int(exc.failure)
    print("live checks OK")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    import dagster as dg
    from prometheus_client import start_http_server

    from ut_video_assets.metrics import BudgetCollector, budget_from_env, registry_for

    try:
        budget = BudgetCollector(budget_from_env())
    except SettingsError as exc:
        print(f"metrics: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        instance = dg.DagsterInstance.get()
    except dg.DagsterError as exc:
        print(f"metrics: cannot open the Dagster instance ({type(exc).__name__}); set DAGSTER_HOME", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    server, _thread = start_http_server(args.port, addr=args.host, registry=registry_for(lambda: instance, budget))
    port = server.server_address[1]
    print(f"Prometheus metrics at http://{args.host}:{port}/metrics (read from the instance in $DAGSTER_HOME)")
    print("Press Ctrl-C to stop.", flush=True)
    try:
        _wait_for_signal()
    finally:
        server.shutdown()
        server.server_close()
        budget.close()
        instance.dispose()
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    """The discovered sessions of a test (and a day), what became of their videos, and their partition pages."""
    import dagster as dg

    from ut_video_assets.defs.finder import find_sessions, sessions_window

    try:
        ui_url = args.ui_url or Settings(os.environ).url("UT_DAGSTER_UI_URL")
        start, end = sessions_window(args.date, args.days)
    except (SettingsError, ValueError) as exc:
        print(f"sessions: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        instance = dg.DagsterInstance.get()
    except dg.DagsterError as exc:
        print(f"sessions: cannot open the Dagster instance ({type(exc).__name__}); set DAGSTER_HOME", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    with instance:
        rows = find_sessions(instance, test_id=args.test, started_from=start, started_before=end, ui_url=ui_url)
    for row in rows:
        started = f"{row.start_time:%Y-%m-%d %H:%M} UTC" if row.start_time else "start unknown"
        print(f"{started}  {row.session_id}  test {row.test_id}  {row.status}  {row.link}")
        if row.detail:
            print(f"    {row.detail}")
    print(f"{len(rows)} session(s)", file=sys.stderr)
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    from ut_video_assets.sandbox.store import EmbeddedStore, ensure_bucket

    data_dir = Path(args.data_dir) if args.data_dir else _state_dir(args) / "store"
    with EmbeddedStore(data_dir, access_key=args.access_key, secret_key=args.secret_key) as endpoint:
        if args.bucket:
            ensure_bucket(endpoint.client(), args.bucket)
        print(f"S3 store: {endpoint.endpoint_url} (data in {data_dir}, log {data_dir / 'weed.log'})")
        print("Environment for boto3 / the aws CLI / the pipeline:")
        for key, value in endpoint.env().items():
            print(f"  export {key}={value}")
        if args.bucket:
            print(f"  export UT_VIDEO_BUCKET={args.bucket}")
        print("Press Ctrl-C to stop.", flush=True)
        _wait_for_signal()
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from ut_video_assets.sandbox.scenario import SandboxConfig
    from ut_video_assets.sandbox.server import serve
    from ut_video_assets.sandbox.store import EmbeddedStore, ensure_bucket

    state = _state_dir(args) / "sandbox-by-hand"
    config = SandboxConfig(
        seed=args.seed,
        tests=args.tests,
        sessions_per_test=args.sessions,
        rate_limit=args.rate_limit,
        rate_window_seconds=args.rate_window,
        complete_every_seconds=args.complete_every,
    )
    with EmbeddedStore(state / "store") as endpoint:
        ensure_bucket(endpoint.client(), args.bucket)
        print(f"S3 store: {endpoint.endpoint_url}; destination bucket: export UT_VIDEO_BUCKET={args.bucket}")
        serve(config, endpoint, state / "sandbox")
    return 0


def _stack_options(args: argparse.Namespace, *, fresh: bool, name: str) -> StackOptions:
    from ut_video_assets.sandbox.stack import StackOptions

    downloads = Settings().integer("UT_MAX_CONCURRENT_DOWNLOADS")
    return StackOptions(
        state_dir=_state_dir(args) / name,
        sensor_interval_seconds=args.sensor_interval,
        max_concurrent_downloads=downloads,
        fresh=fresh,
        store=args.store,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from ut_video_assets.sandbox.stack import StackError, demo_scenario, run_demo

    try:
        options = _stack_options(args, fresh=True, name="demo")
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        return run_demo(
            options=options,
            scenario=demo_scenario(args.rate_limit, args.rate_window),
            timeout=args.timeout,
            echo=_echo,
            keep_running=args.keep_running,
            downstream=not args.videos_only,
        )
    except StackError as exc:
        print(f"DEMO FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted; everything the demo started has been stopped.", file=sys.stderr)
        return 130


def cmd_dev(args: argparse.Namespace) -> int:
    from ut_video_assets.sandbox.stack import StackError, dev_scenario, run_dev

    try:
        options = _stack_options(args, fresh=args.fresh, name="dev")
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        return run_dev(options=options, scenario=dev_scenario(args.complete_every), port=args.port, echo=_echo)
    except StackError as exc:
        print(f"dev stack failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _echo(line: str) -> None:
    print(line, flush=True)


def _state_dir(args: argparse.Namespace) -> Path:
    from ut_video_assets.sandbox.stack import default_state_dir

    return Path(args.state_dir).resolve() if args.state_dir else default_state_dir()


# --------------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - a statement per option
    parser = argparse.ArgumentParser(
        prog="ut-video-assets", description="UserTesting session videos into S3, with Dagster."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(func=_needs_sandbox(name, func) if name in SANDBOX_COMMANDS else func)
        return command

    def state_option(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--state-dir", help="local state directory (default: $UT_STATE_DIR or .state/ at the repository root)"
        )

    def store_option(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--store",
            choices=("s3", "gcs", "azure"),
            default="s3",
            help="where the videos go: the embedded S3 store (default), fake-gcs-server or Azurite",
        )

    check = add(
        "check-config", cmd_check_config, "validate the pipeline settings in this environment (exit 2 on error)"
    )
    check.add_argument(
        "--live",
        action="store_true",
        help="also mint a token, list one page of one watched test (one request from the shared budget) and "
        "write, re-write create-only and delete a probe object in the destination; exit codes 10-19 name the "
        "failure (README, check-config --live)",
    )
    check.add_argument("--timeout", type=float, default=90.0, help="give up on the live checks after N s (90)")

    metrics = add(
        "metrics", cmd_metrics, "serve the pipeline's state as Prometheus metrics (read from the Dagster instance)"
    )
    metrics.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 in a pod)"
    )
    metrics.add_argument("--port", type=int, default=9464, help="port (default 9464; 0 picks a free one)")

    sessions = add(
        "sessions",
        cmd_sessions,
        "list discovered sessions (by test and start day) with their video's state and their page in the Dagster "
        "UI (read from the Dagster instance in $DAGSTER_HOME)",
    )
    sessions.add_argument("--test", help="only this test's sessions (its UUID)")
    sessions.add_argument(
        "--date", help="only sessions started on this UTC day: YYYY-MM-DD, 'today' or 'yesterday' (default: any)"
    )
    sessions.add_argument("--days", type=int, default=1, help="with --date: that many days from it (default 1)")
    sessions.add_argument("--ui-url", help="the Dagster UI's address for the links (default: $UT_DAGSTER_UI_URL)")

    store = add("store", cmd_store, "run the embedded S3 store until Ctrl-C, printing endpoint and credentials")
    state_option(store)
    store.add_argument("--data-dir", help="the store's data directory (default: <state dir>/store)")
    store.add_argument("--bucket", help="create this bucket")
    store.add_argument("--access-key", help="access key (default: random)")
    store.add_argument("--secret-key", help="secret key (default: random)")

    sandbox = add("sandbox", cmd_sandbox, "run the store and the Results API sandbox until Ctrl-C")
    state_option(sandbox)
    sandbox.add_argument("--seed", type=int, default=1)
    sandbox.add_argument("--tests", type=int, default=2)
    sandbox.add_argument("--sessions", type=int, default=5, help="completed sessions per test")
    sandbox.add_argument("--rate-limit", type=int, default=10, help="requests per window (default 10)")
    sandbox.add_argument("--rate-window", type=float, default=60.0, help="window in seconds (default 60)")
    sandbox.add_argument("--complete-every", type=float, default=None, help="complete a new session every N s")
    sandbox.add_argument("--bucket", default="ut-session-videos", help="destination bucket to create")

    demo = add("demo", cmd_demo, "ingest a small scenario end to end with dagster-daemon, then exit")
    state_option(demo)
    store_option(demo)
    demo.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds (default 1800)")
    demo.add_argument(
        "--videos-only",
        action="store_true",
        help="only the videos and the catalog: no transcripts, audio, speech-to-text, cuts, clips or dataset",
    )
    demo.add_argument("--sensor-interval", type=int, default=5, help="discovery interval in seconds (default 5)")
    demo.add_argument("--rate-limit", type=int, default=10, help="sandbox requests per window (default 10)")
    demo.add_argument("--rate-window", type=float, default=60.0, help="sandbox window in seconds (default 60)")
    demo.add_argument("--keep-running", action="store_true", help="keep the stack up after success until Ctrl-C")

    dev = add("dev", cmd_dev, "run the stack with the Dagster UI until Ctrl-C")
    state_option(dev)
    store_option(dev)
    dev.add_argument("--port", type=int, default=None, help="UI port on 127.0.0.1 (default: a free one)")
    dev.add_argument("--sensor-interval", type=int, default=5, help="discovery interval in seconds (default 5)")
    dev.add_argument("--complete-every", type=float, default=45.0, help="a new session completes every N s")
    dev.add_argument("--fresh", action="store_true", help="delete the dev state (runs, videos) first")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
