"""Producers: things that write to a transport as fast as it can take it.

`FileSender` is Twisted's `basic.FileSender`: a pull producer that streams a file (or any
object with `read(n)`) to a consumer, one chunk per `resumeProducing`, optionally through a
`transform`. Where Twisted returns a Deferred, `beginFileTransfer` returns a `Completion`:
`await` it in a coroutine, or `add_done_callback` it from plain code, to learn when the
file was sent (its result is the last byte sent) or that the consumer stopped it.

forkd's transports drive a pull producer (`registerProducer(producer, streaming=False)`)
by calling `resumeProducing` again each time they can take more, as Twisted's do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any, BinaryIO

__all__ = ["Completion", "FileSender"]


class Completion:
    """The outcome of something that finishes later: a result or an exception, once.

    Awaitable on a running event loop; `add_done_callback(callback)` calls
    `callback(completion)` when it is done (at once if it already is)."""

    def __init__(self) -> None:
        self.done = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Completion], Any]] = []

    def set_result(self, result: Any) -> None:
        self._finish(result, None)

    def set_exception(self, error: BaseException) -> None:
        self._finish(None, error)

    def _finish(self, result: Any, error: BaseException | None) -> None:
        if self.done:
            raise RuntimeError("a Completion finishes once")
        self.done, self._result, self._error = True, result, error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def result(self) -> Any:
        """The result, or raise the exception; only once done."""
        if not self.done:
            raise asyncio.InvalidStateError("not done yet")
        if self._error is not None:
            raise self._error
        return self._result

    def add_done_callback(self, callback: Callable[[Completion], Any]) -> None:
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def __await__(self) -> Generator[Any, None, Any]:
        if not self.done:
            future = asyncio.get_running_loop().create_future()

            def wake(_: Completion) -> None:
                if not future.done():
                    future.set_result(None)

            self.add_done_callback(wake)
            yield from future.__await__()
        return self.result()


class FileSender:
    """Streams a file to a consumer (a transport) as a pull producer."""

    CHUNK_SIZE = 2**14

    def __init__(self) -> None:
        self.file: BinaryIO | None = None
        self.consumer: Any = None
        self.transform: Callable[[bytes], bytes] | None = None
        self.lastSent = b""
        self.deferred: Completion | None = None  # Twisted's name for the completion

    def beginFileTransfer(
        self,
        file: BinaryIO,
        consumer: Any,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> Completion:
        """Start sending; the Completion's result is the last byte sent."""
        self.file, self.consumer, self.transform = file, consumer, transform
        self.deferred = completion = Completion()
        consumer.registerProducer(self, False)
        return completion

    def resumeProducing(self) -> None:
        chunk = self.file.read(self.CHUNK_SIZE) if self.file is not None else b""
        if not chunk:
            self.file = None
            self.consumer.unregisterProducer()
            if self.deferred is not None:
                completion, self.deferred = self.deferred, None
                completion.set_result(self.lastSent)
            return
        if self.transform is not None:
            chunk = self.transform(chunk)
        self.consumer.write(chunk)
        self.lastSent = chunk[-1:]

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        if self.deferred is not None:
            completion, self.deferred = self.deferred, None
            completion.set_exception(Exception("Consumer asked us to stop producing"))
