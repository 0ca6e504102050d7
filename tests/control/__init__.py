"""Tests of forkd.control: the control server and commands, forkctl, the shell, telnet."""
