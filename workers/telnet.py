"""The telnet tap: a password-protected Python shell inside the running application.

    mktap --append app.tap telnet --port 4040 --username admin --password-file pw

The seed's "add a telnet server to your tap ... telnet into your application and change
things there on the run". Served by the master itself (`servedByMaster`), because that is
where the live application is: the same shell as `forkctl shell` (forkd.control.shell), with
`application` and `import __main__; __main__.application`.

Security, because this is a remote code prompt:
- there is no default password: the tap refuses to build without --password or
  --password-file (the file is better: a command line is visible in `ps`);
- only a salted scrypt hash is stored in the tap, compared in constant time;
- it binds 127.0.0.1 unless --interface says otherwise;
- the client is asked to stop echoing while the password is typed (IAC WILL ECHO);
- a wrong login closes the connection: no shell, no retry on the same connection.

Wire: RFC 854 telnet. Option negotiation from the client is read and ignored (IAC IAC is a
literal 255); lines end with CR LF, CR NUL or LF.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from typing import Any

from forkd import usage
from forkd.ports import TCPPort
from forkd.protocol import Factory, Protocol

log = logging.getLogger("forkd.telnet")

usage_message = """Telnet shell: a Python prompt inside the running application.

Log in with the username and password given here, then use `application` (or the seed's
`import __main__; __main__.application`). Changes reach the workers live. Binds 127.0.0.1
unless --interface says otherwise. A password is required; only its salted hash is saved.
"""

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
ECHO = 1
MAX_LOGIN_LINE = 1024
MAX_LINE = 65536
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash`, all hex: what the tap stores instead of the password."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches the stored hash; constant time in the comparison."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(bytes.fromhex(expected)),
        )
        return hmac.compare_digest(digest, bytes.fromhex(expected))
    except (ValueError, TypeError, MemoryError):
        return False


class TelnetShell(Protocol):
    """Login (username, then password with echo off), then the forkd shell line by line.

    `master` is set by the master-side driver (forkd.control.masterports) before makeConnection."""

    master: Any = None

    def connectionMade(self) -> None:
        self.state = "username"
        self.username = ""
        self.pending = bytearray()  # the current line, telnet commands removed
        self.statement: list[str] = []
        self.shell: Any = None
        self._iac: list[int] = []  # a telnet command being read
        self._subnegotiation = False
        self._last_cr = False
        self.transport.write(b"forkd shell\r\nusername: ")

    def connectionLost(self, reason: Any = None) -> None:
        """Stop here: what the peer sent after the connection was closed under it (its
        output overflowed, say) must not run as more statements."""
        self.state = "closed"

    def evictable(self) -> bool:
        """Whether the master may close this connection to admit a new one: only before
        login, so a flood of idle connections cannot lock the administrator out."""
        return getattr(self, "state", "") in ("username", "password")

    # -- telnet framing -------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        for byte in data:
            if self.state == "closed":
                return
            if self._iac or byte == IAC:
                self._command(byte)
                continue
            if self._subnegotiation:
                continue
            if byte == 0 or (byte == 10 and self._last_cr):
                self._last_cr = False  # CR NUL and CR LF end one line, once
                continue
            self._last_cr = byte == 13
            if byte in (10, 13):
                self._line(self.pending.decode("utf-8", "replace"))
                self.pending.clear()
                continue
            self.pending.append(byte)
            limit = MAX_LINE if self.state == "shell" else MAX_LOGIN_LINE
            if len(self.pending) > limit:
                self._close(b"\r\nline too long\r\n")

    def _command(self, byte: int) -> None:
        self._iac.append(byte)
        sequence = self._iac
        if len(sequence) == 1:
            return
        verb = sequence[1]
        if verb == IAC and len(sequence) == 2:  # IAC IAC: a literal 255 byte
            self._iac = []
            if not self._subnegotiation:
                self.pending.append(IAC)
            return
        if verb in (WILL, WONT, DO, DONT):
            if len(sequence) == 3:
                self._iac = []
            return
        self._iac = []
        if verb == SB:
            self._subnegotiation = True
        elif verb == SE:
            self._subnegotiation = False

    # -- login and shell ------------------------------------------------------------------
    def _line(self, line: str) -> None:
        if self.state == "username":
            self.username = line.strip()
            self.state = "password"
            self.transport.write(bytes([IAC, WILL, ECHO]) + b"password: ")
        elif self.state == "password":
            self.transport.write(bytes([IAC, WONT, ECHO]) + b"\r\n")
            self._login(line)
        elif self.state == "shell":
            self._statement(line)

    def _login(self, password: str) -> None:
        factory = self.factory
        now = time.monotonic()
        if factory.lockedOut(now):
            log.warning(
                "telnet: login from %s refused: too many failed logins", self.transport.getPeer()
            )
            self._close(b"too many failed logins; try again later\r\n")
            return
        name_ok = hmac.compare_digest(self.username.encode(), factory.username.encode())
        password_ok = verify_password(password, factory.passwordHash)  # always computed
        if not (name_ok and password_ok):
            log.warning(
                "telnet: failed login as %r from %s", self.username[:64], self.transport.getPeer()
            )
            factory.loginFailed(now)
            self._close(b"login incorrect\r\n")
            return
        from forkd.control.shell import Shell

        log.info("telnet: %s logged in from %s", self.username, self.transport.getPeer())
        self.shell = Shell(self.master)
        self.state = "shell"
        self.transport.write(b"`application` is the running application; Ctrl-D leaves.\r\n>>> ")

    def _statement(self, line: str) -> None:
        if line == "\x04" and not self.statement:
            self._close(b"")
            return
        self.statement.append(line)
        output, more = self.shell.push("\n".join(self.statement))
        if not more:
            self.statement = []
        text = output.replace("\r\n", "\n").replace("\n", "\r\n")
        self.transport.write(text.encode("utf-8", "replace") + (b"... " if more else b">>> "))

    def _close(self, farewell: bytes) -> None:
        self.state = "closed"
        if farewell:
            self.transport.write(farewell)
        self.transport.loseConnection()


class ShellFactory(Factory):
    """Builds TelnetShell protocols; served by the master, never by workers.

    Each password check is a deliberately slow scrypt run inside the master's loop, so
    failed logins are rate-limited: after MAX_FAILURES within FAILURE_WINDOW seconds, new
    attempts are refused without hashing until the window has moved on."""

    protocol = TelnetShell
    servedByMaster = True
    MAX_FAILURES = 5
    FAILURE_WINDOW = 60.0

    def __init__(self, username: str, passwordHash: str) -> None:
        self.username = username
        self.passwordHash = passwordHash

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_failures", None)  # run-time state of one master, not configuration
        return state

    def lockedOut(self, now: float) -> bool:
        """Whether too many logins failed lately to spend another scrypt run on one."""
        failures = [t for t in self.__dict__.get("_failures", []) if now - t < self.FAILURE_WINDOW]
        self._failures = failures
        return len(failures) >= self.MAX_FAILURES

    def loginFailed(self, now: float) -> None:
        self.__dict__.setdefault("_failures", []).append(now)


class Options(usage.Options):
    optParameters = [
        ["port", "p", 4040, "TCP port to listen on.", usage.portCoerce],
        ["interface", "i", "127.0.0.1", "Address to listen on (loopback by default)."],
        ["username", "u", "admin", "The login name."],
        [
            "password",
            "w",
            None,
            "The password (--password-file is safer: command lines are visible in ps).",
        ],
        ["password-file", None, None, "Read the password from the first line of this file."],
    ]

    def postOptions(self) -> None:
        password, path = self["password"], self["password-file"]
        if password and path:
            raise usage.UsageError("give --password or --password-file, not both")
        if path:
            try:
                with open(path, encoding="utf-8") as handle:
                    password = handle.readline().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as error:
                reason = getattr(error, "strerror", None) or error
                raise usage.UsageError(f"cannot read password file {path}: {reason}") from None
        if not password:
            raise usage.UsageError(
                "a password is required: --password-file FILE or --password PASSWORD "
                "(there is no default)"
            )
        if not self["username"]:
            raise usage.UsageError("the username must not be empty")
        self["password-hash"] = hash_password(password)
        self["password"] = None  # the plain text goes no further than this object


def getPorts(app: Any, config: Options) -> list[tuple[Any, Factory]]:
    factory = ShellFactory(config["username"], config["password-hash"])
    return [(TCPPort(config["port"], factory, interface=config["interface"]), factory)]
