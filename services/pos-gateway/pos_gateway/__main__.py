"""`python -m pos_gateway [serve|migrate|background|republish --since TIME]`.

`serve` (the default) runs the migrations, then the HTTP API; with `POS_GATEWAY_BACKGROUND=process`
it also runs `background` (the outbox relay and the live-stats consumer) as a child process that
it restarts if it dies and stops when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import threading
from datetime import datetime
from types import TracebackType
from typing import Any

from crm_shared import service_main
from crm_shared.embedded import die_with_parent
from crm_shared.logs import configure_logging
from crm_shared.settings import CommonSettings

from pos_gateway import SERVICE_NAME
from pos_gateway.settings import GatewaySettings

APP_FACTORY = "pos_gateway.__main__:app_factory"
STOP_BUDGET_SECONDS = 8.0  # the API waits 15 s for the background process before killing it

log = logging.getLogger("pos_gateway")


def app_factory() -> Any:
    """What each uvicorn worker process builds for itself (no connection is shared across forks)."""
    from pos_gateway.api import create_app
    from pos_gateway.bootstrap import build

    common = CommonSettings()
    configure_logging(SERVICE_NAME, common.log_level, common.log_json)
    return create_app(build(common, GatewaySettings()))


async def _republish(common: CommonSettings, settings: GatewaySettings, since: datetime, until: datetime | None) -> int:
    from crm_shared.db import make_engine
    from crm_shared.topics import POS_SALES

    from pos_gateway.store import republish

    engine = make_engine(common.database_url, schema=settings.schema_name)
    try:
        return await republish(engine, sales_topic=POS_SALES.qualified(common.topic_prefix), since=since, until=until)
    finally:
        await engine.dispose()


def aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, e.g. 2010-12-01T00:00:00+00:00")
    return moment


def _republish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=aware, required=True, help="event time, ISO 8601 with zone")
    parser.add_argument("--until", type=aware, default=None)


def _republish_command(args: argparse.Namespace, common: CommonSettings, settings: GatewaySettings) -> int:
    queued = asyncio.run(_republish(common, settings, args.since, args.until))
    print(f"queued {queued} sales for publishing; the running gateway's relay sends them")
    return 0


async def _run_background(common: CommonSettings, settings: GatewaySettings) -> None:
    from crm_shared.web import settle_garbage_collector
    from redis.asyncio import Redis

    from pos_gateway.bootstrap import build_background, make_gateway_engine

    engine = make_gateway_engine(common, settings)
    redis = Redis.from_url(common.redis_url)
    background = build_background(common, settings, engine, redis)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await background.start()
    settle_garbage_collector()
    try:
        await stopping.wait()
    finally:
        try:  # a consumer still joining its group can take long to leave it; do not linger for it
            await asyncio.wait_for(background.stop(), STOP_BUDGET_SECONDS)
        except TimeoutError:
            log.warning("background work did not stop in time; exiting anyway")
        await redis.aclose()
        await engine.dispose()


def _background_command(_: argparse.Namespace, common: CommonSettings, settings: GatewaySettings) -> int:
    import uvloop

    uvloop.run(_run_background(common, settings))
    return 0


class BackgroundProcess:
    """`python -m pos_gateway background` beside the API: restarted if it dies, stopped with the API.

    Its own session, so a Ctrl-C meant for the API does not race the restart; a parent-death signal,
    so a SIGKILLed API leaves no orphan. That signal follows the thread that started the child, so
    the supervising thread both starts it and outlives it.
    """

    RESTART_DELAY = 1.0

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._previous_sigterm: Any = signal.SIG_DFL
        self._thread = threading.Thread(target=self._supervise, name="background-process", daemon=True)

    def __enter__(self) -> BackgroundProcess:
        # uvicorn shuts down gracefully on SIGTERM, then raises it again with the handler it found:
        # this one, so that the child is stopped too instead of the process just dying.
        self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_gracefully)
        self._thread.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        signal.signal(signal.SIGTERM, self._previous_sigterm)
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self._thread.join(5)

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._stopping.is_set():
                    return
                self._process = process = subprocess.Popen(
                    [sys.executable, "-m", "pos_gateway", "background"], stdin=subprocess.DEVNULL,
                    start_new_session=True, preexec_fn=die_with_parent())
            code = process.wait()
            if self._stopping.wait(self.RESTART_DELAY):
                return
            log.warning("background process exited; restarting it", extra={"exit_code": code})


def _exit_gracefully(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _serve(common: CommonSettings, settings: GatewaySettings) -> int:
    service_main.migrate(common, settings)  # before the background process, which needs the tables
    from pos_gateway.http_protocol import CoalescingHttpToolsProtocol

    if settings.background == "process" and (settings.relay_enabled or settings.live_stats_enabled):
        with BackgroundProcess():
            service_main.serve(APP_FACTORY, settings, http=CoalescingHttpToolsProtocol)
    else:
        service_main.serve(APP_FACTORY, settings, http=CoalescingHttpToolsProtocol)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in ([], ["serve"]):
        # service_main.run's own serve has no hook between the migrations and the API, where the
        # background process starts; the other commands (and --help) go through it as usual.
        common, settings = CommonSettings(), GatewaySettings()
        configure_logging(SERVICE_NAME, common.log_level, common.log_json)
        return _serve(common, settings)
    return service_main.run(
        argv, service=SERVICE_NAME, description=__doc__, settings_factory=GatewaySettings, app_factory=APP_FACTORY,
        extra={"republish": ("queue recorded sales again for pos.sales.v1 (same event ids)",
                             _republish_arguments, _republish_command),
               "background": ("run the outbox relay and the live-stats consumer (what `serve` starts beside "
                              "the API when POS_GATEWAY_BACKGROUND=process)", lambda _: None, _background_command)})


if __name__ == "__main__":
    sys.exit(main())
