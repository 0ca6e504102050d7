"""Framing receivers: lines, netstrings and length-prefixed strings.

These are Twisted's `twisted.protocols.basic` receivers with the same names, hooks and
framing rules, written for forkd's asyncio-backed `Protocol`. Each class turns the byte
stream the peer sends into whole messages (`lineReceived`, `stringReceived`), bounds how
much it buffers (`MAX_LENGTH`) and gives an overridable hook when the bound is hit; the
default hook closes the connection, so bad or hostile input never crashes a worker.

`dataReceived` is the entry point, as in Twisted (forkd's Protocol makes it the event
loop's `data_received` too). Every receiver may be called re-entrantly: data that arrives
from inside a callback (say `setLineMode(extra)` from `rawDataReceived`) is appended to
the buffer and parsed, in order, once the callback returns.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable
from typing import Any

from forkd.producers import FileSender
from forkd.protocol import Protocol

log = logging.getLogger("forkd.basic")

__all__ = [
    "FileSender",
    "LineOnlyReceiver",
    "LineReceiver",
    "StatefulStringProtocol",
    "NetstringReceiver",
    "NetstringParseError",
    "IncompleteNetstring",
    "IntNStringReceiver",
    "Int32StringReceiver",
    "Int16StringReceiver",
    "Int8StringReceiver",
    "StringTooLongError",
]


class _PauseableMixin:
    """Lets a receiver act as the producer of the messages it parses.

    While `paused`, data is buffered but not delivered; `resumeProducing` delivers what
    was buffered at once (the peer may have nothing more to send). The transport is paused
    too, so the kernel's receive window, not our buffer, holds back a fast peer.
    """

    paused = False
    transport: Any
    dataReceived: Callable[[bytes], Any]

    def pauseProducing(self) -> None:
        self.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self.transport.resumeProducing()
        self.dataReceived(b"")

    def stopProducing(self) -> None:
        self.paused = True
        self.transport.stopProducing()


class LineReceiver(Protocol, _PauseableMixin):
    """Receives lines, or raw data, depending on mode.

    Wire format (line mode): ``line DELIMITER line DELIMITER ...`` where `delimiter` is
    ``b"\\r\\n"`` by default and a line holds at most `MAX_LENGTH` (16384) bytes, not
    counting the delimiter. Each line, without its delimiter, goes to `lineReceived`.
    In raw mode (`setRawMode`) every chunk goes to `rawDataReceived` as it arrives, until
    `setLineMode(extra)` switches back (passing on any bytes that belong to lines).

    A line longer than `MAX_LENGTH` calls `lineLengthExceeded` with the rest of the buffer
    starting at that line; so does a partial line once `MAX_LENGTH + len(delimiter)`
    bytes have arrived without a delimiter. The default closes the connection.

    Inside `lineReceived` a protocol may switch mode, change `delimiter`, pause, call
    `clearLineBuffer` (which returns the bytes after the current line) or close the
    connection; no further line is delivered once `transport.disconnecting` is true.
    """

    line_mode = 1
    delimiter = b"\r\n"
    MAX_LENGTH = 16384
    _buffer = b""
    _busyReceiving = False
    # While dataReceived delivers the lines of one split, the lines not yet delivered are
    # lines[_pendingIndex:] (the last element is the partial line after the final
    # delimiter), split on _pendingDelimiter; data that arrives meanwhile goes to _buffer.
    # Splitting once per chunk rather than once per line keeps a chunk of many short lines
    # linear in its size.
    _pending: list[bytes] | None = None
    _pendingIndex = 0
    _pendingDelimiter = b""
    # The buffer's first _scanned bytes hold no _scannedDelimiter: a long line arriving in
    # small chunks is searched once, not once per chunk. Set only when dataReceived
    # returns for want of a delimiter; any other change to the buffer forgets it.
    _scanned = 0
    _scannedDelimiter = b""

    def clearLineBuffer(self) -> bytes:
        """Drop all buffered data and return it; from inside lineReceived, that is
        everything after the current line."""
        self._scanned = 0
        pending = self._pending
        if pending is None:
            data = self._buffer
        else:
            data = self._pendingDelimiter.join(pending[self._pendingIndex :]) + self._buffer
            self._pending = None
        self._buffer = b""
        return data

    def _restorePending(self) -> None:
        """Put the lines of an interrupted split back in front of the buffer."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            rest = self._pendingDelimiter.join(pending[self._pendingIndex :])
            self._buffer = rest + self._buffer

    def dataReceived(self, data: bytes) -> Any:
        """Split the stream into lines (or raw chunks) and deliver them.

        Returns what a callback returned if it was true (Twisted's old way of asking for
        the connection to be dropped), else None.
        """
        if self._busyReceiving:
            self._buffer += data
            return None
        self._busyReceiving = True
        scanned = self._scanned
        self._scanned = 0
        try:
            self._buffer += data
            while self._buffer and not self.paused:
                if not self.line_mode:
                    scanned = 0
                    chunk = self._buffer
                    self._buffer = b""
                    why = self.rawDataReceived(chunk)
                    if why:
                        return why
                    continue
                delimiter = self.delimiter
                buffer = self._buffer
                if (
                    scanned
                    and delimiter == self._scannedDelimiter
                    and buffer.find(delimiter, max(0, scanned - len(delimiter) + 1)) < 0
                ):
                    lines = [buffer]
                else:
                    lines = buffer.split(delimiter)
                scanned = 0
                last = len(lines) - 1
                if not last:
                    if len(buffer) >= self.MAX_LENGTH + len(delimiter):
                        self._buffer = b""
                        return self.lineLengthExceeded(buffer)
                    self._scanned = len(buffer)
                    self._scannedDelimiter = delimiter
                    return None
                self._buffer = b""
                self._pending = lines
                self._pendingDelimiter = delimiter
                index = 0
                while index < last:
                    line = lines[index]
                    index += 1
                    self._pendingIndex = index
                    if len(line) > self.MAX_LENGTH:
                        self._pendingIndex = index - 1
                        return self.lineLengthExceeded(self.clearLineBuffer())
                    why = self.lineReceived(line)
                    transport = self.transport
                    if why or (transport is not None and transport.disconnecting):
                        self._restorePending()
                        return why
                    if self._pending is not lines:
                        break  # clearLineBuffer dropped the rest
                    if self.paused or not self.line_mode or self.delimiter != delimiter:
                        self._restorePending()
                        break
                else:
                    # Every complete line is delivered: the partial one (and anything that
                    # arrived meanwhile) is the buffer, checked for length by the next pass,
                    # which need not search the partial line again.
                    self._pending = None
                    self._buffer = lines[last] + self._buffer
                    scanned = len(lines[last])
                    self._scannedDelimiter = delimiter
            return None
        finally:
            self._restorePending()  # only when a callback raised
            self._busyReceiving = False

    def setLineMode(self, extra: bytes = b"") -> Any:
        """Deliver lines from now on; `extra` (bytes read past the raw data) is parsed
        for lines first. Returns what dataReceived returns for `extra`."""
        self.line_mode = 1
        if extra:
            return self.dataReceived(extra)
        return None

    def setRawMode(self) -> None:
        """Deliver data to rawDataReceived, unparsed, from now on (including the bytes
        already buffered after the current line)."""
        self.line_mode = 0

    def rawDataReceived(self, data: bytes) -> Any:
        """Override to handle data in raw mode."""
        raise NotImplementedError

    def lineReceived(self, line: bytes) -> Any:
        """Override to handle each line, received without its delimiter."""
        raise NotImplementedError

    def sendLine(self, line: bytes) -> Any:
        """Write `line` followed by the delimiter."""
        return self.transport.write(line + self.delimiter)

    def lineLengthExceeded(self, line: bytes) -> Any:
        """Called with the buffer from the start of a line that is too long (it may hold
        more lines, or only the start of the long one). The default closes the
        connection, since a peer that sends such lines is broken or hostile."""
        return self.transport.loseConnection()


class LineOnlyReceiver(Protocol):
    """Lines and nothing else: a simpler, faster LineReceiver with no raw mode.

    As Twisted's: `delimiter` (default CRLF) splits the stream into lines for
    `lineReceived`; a line (or a buffered partial line) longer than `MAX_LENGTH` goes to
    `lineLengthExceeded`, which closes the connection; no line is delivered once the
    transport is disconnecting."""

    delimiter = b"\r\n"
    MAX_LENGTH = 16384
    _buffer = b""

    def dataReceived(self, data: bytes) -> Any:
        lines = (self._buffer + data).split(self.delimiter)
        self._buffer = lines.pop(-1)
        for line in lines:
            if self.transport.disconnecting:
                return None  # lineReceived closed the connection: the rest is not wanted
            if len(line) > self.MAX_LENGTH:
                return self.lineLengthExceeded(line)
            self.lineReceived(line)
        if len(self._buffer) > self.MAX_LENGTH:
            return self.lineLengthExceeded(self._buffer)
        return None

    def lineReceived(self, line: bytes) -> Any:
        """Override: one line, without its delimiter."""
        raise NotImplementedError

    def sendLine(self, line: bytes) -> Any:
        return self.transport.writeSequence((line, self.delimiter))

    def lineLengthExceeded(self, line: bytes) -> Any:
        return self.transport.loseConnection()


class StatefulStringProtocol:
    """A mixin that routes each string of a string receiver to `proto_<state>`.

    Mixed into a NetstringReceiver or an IntNStringReceiver (listed first): each
    `stringReceived(string)` calls `proto_<self.state>(string)`, whose return value is the
    next state; the state "done" closes the connection. As in Twisted, a state with no
    handler is logged and the string dropped."""

    state = "init"
    transport: Any

    def stringReceived(self, string: bytes) -> None:
        handler = getattr(self, "proto_" + self.state, None)
        if handler is None:
            log.warning("%r: no proto_%s handler: string dropped", self, self.state)
            return
        self.state = handler(string)
        if self.state == "done":
            self.transport.loseConnection()


class NetstringParseError(ValueError):
    """The incoming data is not in valid netstring format."""


class IncompleteNetstring(Exception):
    """Not enough data to complete a netstring (kept for Twisted compatibility)."""


class NetstringReceiver(Protocol):
    """Sends and receives netstrings (https://cr.yp.to/proto/netstrings.txt).

    Wire format: ``LENGTH ":" DATA ","`` where LENGTH is the decimal length of DATA in
    ASCII digits: no sign, no whitespace, no leading zero except the single digit
    ``0``; LENGTH may not exceed `MAX_LENGTH` (99999). Each DATA goes to
    `stringReceived`.

    Any violation (a bad character, a missing comma, a length over `MAX_LENGTH`, found
    as soon as the digits so far make it certain) sets `brokenPeer` and closes the
    connection; nothing after the error is delivered.
    """

    MAX_LENGTH = 99999
    brokenPeer = 0
    # A bytearray, so a long string arriving in small chunks costs linear time.
    _buffer: bytearray | None = None
    _expected = -1  # payload length of the netstring being read, -1 while reading its length
    _busyReceiving = False

    _LENGTH = re.compile(rb"(0|[1-9][0-9]*):")
    _LENGTH_PREFIX = re.compile(rb"0|[1-9][0-9]*")

    _MISSING_LENGTH = "The received netstring does not start with a length specification."
    _TOO_LONG = "The received netstring is longer than the maximum %s specified by self.MAX_LENGTH"
    _MISSING_COMMA = "The received netstring is not terminated by a comma."

    def makeConnection(self, transport: Any, server: Any = None) -> None:
        self._buffer = bytearray()
        self._expected = -1
        self.brokenPeer = 0
        super().makeConnection(transport, server)

    def sendString(self, string: bytes) -> None:
        """Write `string` framed as a netstring."""
        self.transport.write(b"".join((b"%d:" % len(string), string, b",")))

    def stringReceived(self, string: bytes) -> Any:
        """Override to handle each netstring's DATA."""
        raise NotImplementedError

    def _extractLength(self, digits: bytes | bytearray) -> int:
        """The length the digits give, or NetstringParseError if over MAX_LENGTH.

        The digit count is checked first so a peer cannot make us convert a huge number.
        """
        limit = self.MAX_LENGTH
        if len(digits) > len(str(limit)) or int(digits) > limit:
            raise NetstringParseError(self._TOO_LONG % (limit,))
        return int(digits)

    def dataReceived(self, data: bytes) -> None:
        """Parse netstrings out of the stream and deliver their payloads."""
        if self.brokenPeer:
            return
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = bytearray()
        buffer += data
        if self._busyReceiving:
            return  # the call below us on the stack parses it after the callback returns
        self._busyReceiving = True
        position = 0
        try:
            while len(buffer) > position:
                if self._expected < 0:
                    match = self._LENGTH.match(buffer, position)
                    if match is None:
                        if self._LENGTH_PREFIX.fullmatch(buffer, position) is None:
                            raise NetstringParseError(self._MISSING_LENGTH)
                        self._extractLength(buffer[position:])
                        break  # a valid start of a length: wait for more
                    self._expected = self._extractLength(match.group(1))
                    position = match.end()
                end = position + self._expected
                if len(buffer) <= end:
                    break
                if buffer[end] != 0x2C:  # b","
                    raise NetstringParseError(self._MISSING_COMMA)
                string = bytes(buffer[position:end])
                position = end + 1
                self._expected = -1
                self.stringReceived(string)
                if self.brokenPeer:
                    break
        except NetstringParseError:
            self._handleParseError()
        finally:
            if self.brokenPeer:
                buffer.clear()
            else:
                del buffer[:position]
            self._busyReceiving = False

    def _handleParseError(self) -> None:
        """Close the connection and mark the peer broken."""
        self.brokenPeer = 1
        self.transport.loseConnection()


class StringTooLongError(AssertionError):
    """A string is too long for the length prefix of the protocol sending it."""


class _RecvdCompatHack:
    """Twisted's `recvd` attribute: the bytes received and not yet parsed.

    Read, it is computed from the working buffer only when asked for; assigned (it is a
    non-data descriptor, so assignment lands in the instance dict), it replaces the
    buffer, and parsing continues from the new value.
    """

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        unprocessed = instance._unprocessed
        if unprocessed is None:
            return b""
        return bytes(unprocessed[instance._compatibilityOffset :])


class IntNStringReceiver(Protocol, _PauseableMixin):
    """Base class for strings prefixed with their length as a big-endian unsigned int.

    Wire format: ``LENGTH DATA`` where LENGTH is packed with `structFormat` (set by the
    subclass: ``!I``, ``!H`` or ``!B``) and takes `prefixLength` bytes. Each DATA goes to
    `stringReceived`. A LENGTH over `MAX_LENGTH` (99999) calls `lengthLimitExceeded(length)`
    at once, before its data arrives; the default closes the connection and the oversized
    string is never delivered.

    `recvd` (from Twisted) is the data received and not yet parsed; assigning to it from
    `stringReceived` replaces that data.
    """

    MAX_LENGTH = 99999
    structFormat = "!I"
    prefixLength = struct.calcsize(structFormat)
    # A bytearray, so a long string arriving in small chunks costs linear time; the
    # parsed part, before _compatibilityOffset, is dropped once per dataReceived call.
    _unprocessed: bytearray | None = None
    _compatibilityOffset = 0
    _busyReceiving = False
    recvd = _RecvdCompatHack()

    def stringReceived(self, string: bytes) -> Any:
        """Override to handle each string, received without its prefix."""
        raise NotImplementedError

    def lengthLimitExceeded(self, length: int) -> None:
        """Called with a length prefix over MAX_LENGTH; the default closes the
        connection rather than buffer a string the protocol said it would refuse."""
        self.transport.loseConnection()

    def _workingBuffer(self) -> bytearray:
        """The buffer of unparsed data, after adopting any value assigned to `recvd`."""
        if "recvd" in self.__dict__:
            self._unprocessed = bytearray(self.__dict__.pop("recvd"))
            self._compatibilityOffset = 0
        buffer = self._unprocessed
        if buffer is None:
            buffer = self._unprocessed = bytearray()
        return buffer

    def dataReceived(self, data: bytes) -> None:
        """Parse length-prefixed strings out of the stream and deliver them."""
        buffer = self._workingBuffer()
        buffer += data
        if self._busyReceiving:
            return  # the call below us on the stack parses it after the callback returns
        self._busyReceiving = True
        try:
            offset = self._compatibilityOffset
            prefixLength = self.prefixLength
            unpack = struct.Struct(self.structFormat).unpack_from
            while len(buffer) - offset >= prefixLength and not self.paused:
                (length,) = unpack(buffer, offset)
                if length > self.MAX_LENGTH:
                    self.lengthLimitExceeded(length)
                    return
                start = offset + prefixLength
                end = start + length
                if len(buffer) < end:
                    break
                string = bytes(buffer[start:end])
                offset = self._compatibilityOffset = end
                self.stringReceived(string)
                current = self._workingBuffer()
                if current is not buffer:  # the callback assigned to recvd
                    buffer = current
                    offset = self._compatibilityOffset
        finally:
            buffer = self._workingBuffer()
            del buffer[: self._compatibilityOffset]
            self._compatibilityOffset = 0
            self._busyReceiving = False

    def sendString(self, string: bytes) -> None:
        """Write `string` with its length prefix; StringTooLongError if the length does
        not fit in the prefix."""
        limit = 2 ** (8 * self.prefixLength)
        if len(string) >= limit:
            raise StringTooLongError(
                f"Try to send {len(string)} bytes whereas maximum is {limit - 1}"
            )
        self.transport.write(struct.pack(self.structFormat, len(string)) + string)


class Int32StringReceiver(IntNStringReceiver):
    """Strings prefixed by their length in 4 bytes, network byte order (``!I``)."""

    structFormat = "!I"
    prefixLength = struct.calcsize(structFormat)


class Int16StringReceiver(IntNStringReceiver):
    """Strings prefixed by their length in 2 bytes, network byte order (``!H``)."""

    structFormat = "!H"
    prefixLength = struct.calcsize(structFormat)


class Int8StringReceiver(IntNStringReceiver):
    """Strings prefixed by their length in 1 byte (``!B``)."""

    structFormat = "!B"
    prefixLength = struct.calcsize(structFormat)
