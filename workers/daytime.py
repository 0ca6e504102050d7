"""The daytime tap: answers each connection with the date and time, then closes (RFC 867).

Written in the seed's own style on purpose (optStrings, optFlags, opt_* methods,
connectionLost without a reason): tap modules written for early Twisted run unchanged.
"""

import time

from forkd import usage
from forkd.ports import TCPPort
from forkd.protocol import Factory, Protocol

usage_message = """Daytime server: tells each client the time and hangs up (RFC 867).

The time is local time unless --utc is given.
"""


class Daytime(Protocol):
    def connectionMade(self):
        now = time.gmtime() if self.factory.utc else time.localtime()
        self.transport.write(time.strftime("%A, %B %d, %Y %H:%M:%S-%Z\r\n", now).encode())
        self.transport.loseConnection()

    def connectionLost(self):
        self.factory.served = self.factory.served + 1


class DaytimeFactory(Factory):
    protocol = Daytime
    served = 0

    def __init__(self, utc=0):
        self.utc = utc


class Options(usage.Options):
    optStrings = [
        ["port", "p", "8013"],
        ["interface", "i", "127.0.0.1", "Address to listen on (0.0.0.0: every IPv4 address)."],
    ]
    optFlags = [["utc", "u"]]

    def opt_quiet(self):
        """Accepted for compatibility; daytime says nothing but the time anyway."""
        self.quiet = 1

    def postOptions(self):
        try:
            self.port = self["port"] = int(self.port)
        except ValueError:
            raise usage.UsageError(f"port must be a number, not {self.port!r}") from None


def getPorts(app, config):
    factory = DaytimeFactory(utc=config.utc)
    return [(TCPPort(config.port, factory, interface=config["interface"]), factory)]
