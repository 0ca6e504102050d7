"""The control plane: the control socket, its commands, the live shell, master-served ports.

It reaches the master only through `forkd.control.api.MasterAPI`, never its modules, so the
supervisor can change inside without the commands noticing.
"""
