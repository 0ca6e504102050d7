"""Shared pytest setup: what goes first on sys.path.

The checkout these tests sit in, so they test this source tree even when the project is
not installed or another checkout is installed in editable mode; and tests/ itself, so the
test tap modules (probetap, udptap) import under the top-level names their pickled classes
carry, as they do in the forkd subprocesses given `tests.TAP_MODULES_DIR` on PYTHONPATH.
"""

import pathlib
import sys

TESTS = pathlib.Path(__file__).resolve().parent
for path in (str(TESTS), str(TESTS.parent)):  # the checkout ends up first
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
