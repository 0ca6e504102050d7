"""The worker process: an event loop serving every port of the application.

Runs in a child forked by the master (see `Master.spawn_worker`, which closes the master-only
descriptors first). From here on, this module owns the process:

1. reset the master's signal handling, set the process title, arm faulthandler (a stuck
   worker's SIGABRT from the master dumps every thread's traceback to the log);
2. boot: `doStart` every factory, then serve every port on a uvloop (or asyncio) loop, on
   the listening sockets inherited from the master; a boot error is sent as `boot_failed`
   and the process exits 3, which stops `forkd start` instead of a respawn loop;
3. say `ready`, then send a `heartbeat` with the counters of `forkd.protocol.stats` every
   HEARTBEAT_INTERVAL, and obey the master's `add_port`/`remove_port` (a stop or a log
   reopen comes as a signal: TERM, QUIT, USR1);
4. stop: close the servers (accepting stops here; the master keeps the sockets open for the
   other workers), call `connectionDraining()` on every open protocol, wait for them to
   close up to the graceful timeout, abort the rest, `doStop` the factories, exit 0.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import faulthandler
import os
import pickle
import signal
import traceback
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NoReturn

import setproctitle

from forkd.ports import port_key
from forkd.protocol import stats
from forkd.supervisor import logs
from forkd.supervisor.channel import Channel, ChannelClosed, ChannelError, Op

uvloop: ModuleType | None
try:  # imported before fork and privilege drop, not when the first loop is made
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a default dependency
    uvloop = None

HEARTBEAT_INTERVAL = 1.0
EXIT_STOPPED = 0
EXIT_BOOT_FAILED = 3
EXIT_CRASHED = 4
DRAIN_POLL = 0.02

DEFERRED_SIGNALS = {signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1}

log = logs.get("worker")


@dataclass
class WorkerSettings:
    """What a worker needs from the master's configuration."""

    number: int
    title: str  # the tap's file name, shown in the process title
    graceful_timeout: float
    heartbeat_interval: float = HEARTBEAT_INTERVAL


def last_line(error: BaseException) -> str:
    """The exception's last traceback line ("ValueError: boom"): what `forkd start` prints.
    A SyntaxError's says where, as its str() does ("SyntaxError: invalid syntax (app.py,
    line 4)"): its last line alone would not, the file and line being on lines before."""
    if isinstance(error, SyntaxError):
        return f"{type(error).__name__}: {error}"
    lines = traceback.format_exception_only(type(error), error)
    return lines[-1].strip() if lines else type(error).__name__


def served_by_worker(port: Any) -> bool:
    return not getattr(getattr(port, "factory", None), "servedByMaster", False)


def cancel_pending(loop: asyncio.AbstractEventLoop, grace: float = 1.0) -> None:
    """Cancel the tasks still running as the worker exits (an ASGI request whose client
    was cut at the end of the drain) and give them `grace` seconds to unwind, so their
    `finally` blocks run and the loop does not log each as "destroyed but pending"."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.wait(pending, timeout=grace))


def log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """What the event loop could not hand to anyone (an exception in a callback, a task
    nobody awaited): one record of forkd's log, with the worker's role and pid and the
    traceback, instead of asyncio's own multi-line message on stderr."""
    error = context.get("exception")
    log.error(
        "event loop: %s",
        context.get("message", "error"),
        exc_info=(type(error), error, error.__traceback__) if error is not None else None,
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed, the stdlib loop otherwise."""
    if uvloop is None:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def reset_signals() -> None:
    """Undo what the master installed: its handlers would record into its own queue."""
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for name in ("SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGCHLD", "SIGABRT"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    # the master decides for the whole group: Ctrl-C, HUP and the job-control signals that
    # a user sends to the process group must not stop or kill workers on their own
    for name in ("SIGINT", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGWINCH"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


class Worker:
    """One worker process's life: boot, serve, heartbeat, drain, exit."""

    def __init__(
        self, application: Any, channel: Channel, settings: WorkerSettings, log_setup: Any
    ) -> None:
        self.application = application
        self.channel = channel
        self.settings = settings
        self.log_setup = log_setup
        self.servers: dict[str, tuple[Any, Any]] = {}  # key -> (port, server or None)
        self.awaited: set[Any] = set()  # factories whose whenStarted has run
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Future[bool] | None = None

    # -- process setup ------------------------------------------------------------------
    def run(self) -> NoReturn:
        """The child's whole life; never returns."""
        code = EXIT_CRASHED
        try:
            code = self._run()
        except BaseException:  # last resort: say why before the master reaps us
            log.exception("worker %d crashed", self.settings.number)
        finally:
            with contextlib.suppress(Exception):
                for handler in logs.get("").handlers:
                    handler.flush()
            os._exit(code)

    def _run(self) -> int:
        # held until the loop's handlers are installed: a stop that arrives while the
        # factories start is then handled as a stop, not the default sudden death
        signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED_SIGNALS)
        reset_signals()
        role = f"worker {self.settings.number}"
        if self.log_setup is not None:
            self.log_setup.set_role(role)
            faulthandler.enable(file=self.log_setup.fault_fd(), all_threads=True)
        else:
            faulthandler.enable(all_threads=True)
        setproctitle.setproctitle(f"forkd: {role} [{self.settings.title}]")
        self.loop = new_event_loop()
        self.loop.set_exception_handler(log_loop_error)
        asyncio.set_event_loop(self.loop)
        try:
            return self.loop.run_until_complete(self.main())
        finally:
            cancel_pending(self.loop)
            self.loop.close()

    # -- the life -----------------------------------------------------------------------
    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self.stopping = loop.create_future()
        try:
            await self.boot()
        except Exception as error:
            message = last_line(error)
            # the whole traceback in the log; the master and `forkd start` say one line
            log.error("boot failed: %s", message, exc_info=error)
            with contextlib.suppress(Exception):
                self.channel.send_blocking({"op": Op.BOOT_FAILED, "error": message})
            return EXIT_BOOT_FAILED
        loop.add_reader(self.channel.fileno(), self.on_channel)
        for signum, graceful in ((signal.SIGTERM, True), (signal.SIGQUIT, False)):
            loop.add_signal_handler(signum, self.stop, graceful)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, DEFERRED_SIGNALS)
        self.send({"op": Op.READY})
        log.info("ready, serving %s", ", ".join(self.servers) or "no ports")
        self.heartbeat()
        graceful = await self.stopping
        await self.drain(graceful)
        with contextlib.suppress(Exception):  # last counters, for the master's log
            self.channel.send_blocking(self.counters(), timeout=1.0)
        return EXIT_STOPPED

    async def boot(self) -> None:
        for port in self.application.ports:
            if served_by_worker(port):
                await self.serve(port)

    async def serve(self, port: Any) -> None:
        factory = port.factory
        factory.doStart()
        try:
            await self.await_started(factory)
            if hasattr(port, "serve"):
                server = await port.serve(asyncio.get_running_loop())
            else:  # a seed-style port: the loop calls doRead when the socket is readable
                asyncio.get_running_loop().add_reader(port.fileno(), port.doRead)
                server = None
        except BaseException:
            factory.doStop()
            raise
        self.servers[port_key(port)] = (port, server)

    async def await_started(self, factory: Any) -> None:
        """Await a factory's `whenStarted()` once, after its startFactory and before it
        serves: where an ASGI application's lifespan startup runs. Raising fails the boot."""
        hook = getattr(factory, "whenStarted", None)
        if hook is not None and factory not in self.awaited:
            self.awaited.add(factory)
            await hook()

    async def await_stopping(self, factory: Any) -> None:
        """Await a factory's `whenStopping()` once, as the worker drains (lifespan shutdown)."""
        hook = getattr(factory, "whenStopping", None)
        if hook is not None and factory in self.awaited:
            self.awaited.discard(factory)
            await hook()

    def unserve(self, key: str) -> Any:
        port, server = self.servers.pop(key)
        if server is not None:
            server.close()
        else:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(port.fileno())
        return port

    @staticmethod
    def counters() -> dict[str, Any]:
        return {
            "op": Op.HEARTBEAT,
            "connections": len(stats.open),
            "accepted": stats.accepted,
            "requests": stats.requests,
            "metrics": stats.metrics(),
        }

    def heartbeat(self) -> None:
        self.send(self.counters())
        assert self.loop is not None
        self.loop.call_later(self.settings.heartbeat_interval, self.heartbeat)

    def stop(self, graceful: bool = True) -> None:
        if self.stopping is not None and not self.stopping.done():
            log.info("stopping (%s)", "graceful" if graceful else "now")
            self.stopping.set_result(graceful)

    async def drain(self, graceful: bool) -> None:
        """Stop accepting, let open connections finish (graceful), then close the rest."""
        factories = []
        stats.draining = True
        for key in list(self.servers):
            factories.append(self.unserve(key).factory)
        if graceful and stats.open:
            for protocol in list(stats.open):
                try:
                    protocol.connectionDraining()
                except Exception:
                    log.exception("connectionDraining of %r failed", protocol)
            deadline = asyncio.get_running_loop().time() + self.settings.graceful_timeout
            while stats.open and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(DRAIN_POLL)
        if stats.open:
            log.info("closing %d connection(s) still open", len(stats.open))
            for protocol in list(stats.open):
                transport = protocol.transport
                with contextlib.suppress(Exception):
                    transport.abortConnection()
            await asyncio.sleep(0)
        for factory in factories:
            try:
                await self.await_stopping(factory)
                factory.doStop()
            except Exception:
                log.exception("doStop of %r failed", factory)
        log.info("stopped after %d connection(s)", stats.accepted)

    def reopen_logs(self) -> None:
        """USR1 (logrotate): the worker's own log, then every factory's (access logs)."""
        if self.log_setup is not None:
            self.log_setup.reopen()
        for port, _server in self.servers.values():
            reopen = getattr(port.factory, "reopenLogs", None)
            if reopen is not None:
                try:
                    reopen()
                except Exception:
                    log.exception("reopenLogs of %r failed", port.factory)

    # -- the channel --------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        try:
            self.channel.send(message)
        except ChannelClosed:
            self.stop(graceful=True)
            return
        if self.channel.wants_write and self.loop is not None:
            self.loop.add_writer(self.channel.fd, self.on_writable)

    def on_writable(self) -> None:
        try:
            done = self.channel.flush()
        except ChannelClosed:
            done = True
        if done and self.loop is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_writer(self.channel.fd)  # by number: closed now, not reused yet

    def on_channel(self) -> None:
        try:
            messages = self.channel.receive()
        except (ChannelClosed, ChannelError):
            log.warning("the master is gone: stopping")
            assert self.loop is not None
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.channel.fd)  # closed just now, number not reused
            self.stop(graceful=True)
            return
        for message, fds in messages:
            self.dispatch(message, fds)

    def dispatch(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message["op"]
        if op == Op.ADD_PORT and fds:
            asyncio.ensure_future(self.add_port(message, fds[0]))
            for extra in fds[1:]:
                os.close(extra)
        elif op == Op.REMOVE_PORT:
            self.remove_port(str(message.get("key")))
        elif op == Op.SHUTDOWN:
            stats.shuttingDown = True
        else:
            for fd in fds:
                os.close(fd)
            log.warning("unknown message from the master: %r", op)

    async def add_port(self, message: dict[str, Any], fd: int) -> None:
        key = str(message.get("key"))
        try:
            port = pickle.loads(base64.b64decode(message["port"]))
            if hasattr(port, "adopt"):
                port.adopt(fd)
            else:
                import socket

                port.socket = socket.socket(fileno=fd)
            if key in self.servers:
                self.unserve(key).factory.doStop()
            await self.serve(port)
        except Exception as error:
            log.error("cannot serve %s: %s", key, last_line(error))
            self.send({"op": Op.PORT_FAILED, "key": key, "error": last_line(error)})
            return
        log.info("serving %s", key)
        self.send({"op": Op.PORT_ADDED, "key": key})

    def remove_port(self, key: str) -> None:
        if key in self.servers:
            port = self.unserve(key)
            try:
                port.factory.doStop()
            except Exception:
                log.exception("doStop of %r failed", port.factory)
            log.info("stopped serving %s", key)
        self.send({"op": Op.PORT_REMOVED, "key": key})
