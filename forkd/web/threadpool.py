"""`ThreadPool`: the threads a worker runs blocking requests in, and the line for them.

A WSGI application blocks, so it runs in threads (forkd.web.wsgi); the event loop keeps
the sockets. The pool has `threads` threads and room for `maxWaiting` requests waiting
for one, and it is bounded the way a pre-fork server can be:

- a request whose body is whole and finds every thread busy is queued for the threads:
  a thread that finishes takes the next at once, with no round trip through the loop.
  Its connection is still read: a client that gives up is seen, and the job skips the
  application when its turn comes (forkd.web.wsgi) instead of costing a thread's time
  for nobody when the worker is busiest; what else could come is a pipelined request,
  which the channel bounds (Site.maxPipelined);
- a request whose body is still coming waits in the loop's line until a thread is free
  for it, its connection not read meanwhile (`hold()`: the rest of the body stays with
  the client, not in this worker's memory; `admit()` reads it again). Requests behind it
  wait behind it: the order of arrival is kept;
- once `threads + maxWaiting` requests are running or waiting, the worker stops
  accepting connections on the ports those requests came by (forkd.listening, HOLD):
  new connections stay in the kernel's listen queue, which every worker shares, so a
  worker with a free thread takes them, or they wait there at no cost to this one.
  However many clients pile up, this worker holds only what it has accepted;
- when a thread frees, accepting resumes one connection at a time (METER: the next once
  this pool has counted the last one's request) until the pool is idle again (then the
  loop's own, faster accepting: FREE).

Requests on connections already open (keep-alive) may still come while the pool is full;
they wait in the line, one per connection at most (the channel answers a connection's
requests one at a time): the line is bounded by the connections the worker accepted, and
those by the rule above.

Everything here runs in the event loop except the jobs; a job tells the pool its thread
is free by calling `threadFree()` in the loop (the WSGI response does it with the last of
its output, so it costs no extra wake-up). Threads are started as needed, up to
`threads`, and live as long as the worker.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable

from forkd.listening import AcceptMode, Listener

__all__ = ["ThreadPool", "Waiting"]

log = logging.getLogger("forkd.web")

Job = Callable[[], None]


class Waiting:
    """A request in the loop's line (its body still coming, or behind one that is);
    `cancel` it if its client goes."""

    __slots__ = ("job", "admit", "bodyComing", "inLine")

    def __init__(self, job: Job, admit: Callable[[], None], bodyComing: Callable[[], bool]) -> None:
        self.job = job
        self.admit = admit
        self.bodyComing = bodyComing
        self.inLine = True


class ThreadPool:
    """`threads` threads, room for `maxWaiting` more requests, and the ports it holds
    back when full."""

    def __init__(
        self,
        threads: int,
        maxWaiting: int,
        name: str = "wsgi",
        submit: Callable[[Job], None] | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError("a thread pool needs at least one thread")
        self.threads = threads
        self.maxWaiting = max(0, maxWaiting)
        self.name = name
        self.busy = 0  # jobs handed to the threads (running or queued for them)
        self.line: deque[Waiting] = deque()
        self.listeners: set[Listener] = set()
        self.mode = AcceptMode.FREE
        self._submit = submit or self._toThread
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._started = 0

    @property
    def load(self) -> int:
        """Requests running or waiting."""
        return self.busy + len(self.line)

    @property
    def capacity(self) -> int:
        return self.threads + self.maxWaiting

    # -- the loop's side ------------------------------------------------------------------
    def run(
        self,
        job: Job,
        hold: Callable[[], None],
        admit: Callable[[], None],
        bodyComing: Callable[[], bool],
        listener: Listener | None = None,
    ) -> Waiting | None:
        """Hand `job` to the threads, or put it in the line: None when handed (a thread is
        free, or the request's body is whole: it is queued for the next thread), else its
        place in the line, to `cancel` if the client goes. `bodyComing()` says whether
        the body is still arriving: such a request waits for a free thread, `hold()`ing
        its client until `admit()`. `listener` is the port the request came by."""
        if listener is not None and listener not in self.listeners:
            self.listeners.add(listener)
            if self.mode is not AcceptMode.FREE:
                listener.setMode(self, self.mode)
        if not self.line and (self.busy < self.threads or not bodyComing()):
            self.busy += 1
            self._submit(job)
            waiting = None
        else:
            waiting = Waiting(job, admit, bodyComing)
            self.line.append(waiting)
            self._fill()
            if waiting.inLine and bodyComing():
                hold()
        if self.load >= self.capacity:
            self._setMode(AcceptMode.HOLD)
        elif listener is not None and self.mode is AcceptMode.METER:
            listener.settle()  # counted: the port may accept the next connection
        return waiting

    def threadFree(self) -> None:
        """A job has returned: the next requests in the line move up."""
        self.busy -= 1
        if self.line:
            self._fill()
        self._update()

    def cancel(self, waiting: Waiting) -> None:
        """The client of a request in the line went away: it never runs."""
        if waiting.inLine:
            waiting.inLine = False
            self.line.remove(waiting)
            self._update()

    def _fill(self) -> None:
        """Hand the line to the threads, in order: a whole request at once (it is in
        memory already, and a thread that finishes takes the next with no round trip
        through the loop), one whose body is still coming only when a thread is free for
        it (its body is read from then on)."""
        line = self.line
        while line:
            waiting = line[0]
            if self.busy >= self.threads and waiting.bodyComing():
                return
            line.popleft()
            waiting.inLine = False
            self.busy += 1
            waiting.admit()
            self._submit(waiting.job)

    def _update(self) -> None:
        load = self.busy + len(self.line)
        if self.mode is AcceptMode.FREE and 0 < load < self.capacity:
            return  # the common case: nothing to change
        if load >= self.capacity:
            self._setMode(AcceptMode.HOLD)
        elif load == 0:
            self._setMode(AcceptMode.FREE)
        elif self.mode is AcceptMode.HOLD:
            self._setMode(AcceptMode.METER)

    def _setMode(self, mode: AcceptMode) -> None:
        if mode is self.mode:
            return
        self.mode = mode
        for listener in list(self.listeners):
            if listener.closed:  # the worker stopped serving that port
                self.listeners.discard(listener)
            else:
                listener.setMode(self, mode)

    # -- the threads ----------------------------------------------------------------------
    def _toThread(self, job: Job) -> None:
        self._jobs.put(job)
        if self._started < min(self.busy, self.threads):  # a job no thread is free for
            self._started += 1
            name = f"{self.name}-{self._started}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except BaseException:  # a job must call threadFree itself; the thread lives on
                log.exception("a job of %s failed", self.name)
