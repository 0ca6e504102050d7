"""forkd: a pre-fork server supervisor with the deployment model of early Twisted.

Write a `Protocol` and a `Factory` (forkd.protocol), a tap module with `Options`,
`usage_message` and `getPorts(app, config)`, turn it into a .tap file with `mktap`, run it
with `forkd start`, and change it while it runs with `forkctl`.
"""

__version__ = "0.1.0"
