"""Read input files in a long-lived child process.

Some corrupt HDF5 files crash the process that reads them (a segfault inside the HDF5
library). Reading each matchfile in a child process turns that crash into a quarantined
file instead of a dead Dask worker and, through its retries, a failed build.

Starting a Python interpreter and importing the readers costs far more than reading a
small matchfile, so the child lives on: each thread that reads gets its own, started at
its first file and started again after a crash. It holds the reader libraries in memory,
so callers stop it when they are done with a batch of files (:func:`stop_reader`). A
child also ends when its parent closes its stdin, or dies.

The protocol, one JSON object per line: the parent sends ``{"module", "name", "path",
"out"}``; the child calls ``module.name(path)``, writes the DataFrame it returns to the
Feather file ``out``, and answers ``{"error": null}`` or ``{"error": reason}``.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather

from lcstore.errors import InputFileError


class _Child:
    """One reader process, and the file its stderr goes to (for its last words)."""

    def __init__(self) -> None:
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    def ask(self, request: dict) -> dict | None:
        """The child's answer to ``request``, or None if it died on it."""
        # The child's stderr shares this file's offset: keep only this request's messages.
        self.stderr.seek(0)
        self.stderr.truncate()
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except OSError:  # a broken pipe: it died before reading the request
            line = ""
        return json.loads(line) if line else None

    def last_words(self) -> str:
        """Exit status and last line of stderr of a child that died."""
        code = self.process.wait()
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return f"exit {code}: {lines[-1] if lines else 'no message'}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self.stderr.close()


_local = threading.local()
_children: set[_Child] = set()
_children_lock = threading.Lock()


def _child() -> _Child:
    """This thread's reader process, started if it has none or its last one died."""
    child = getattr(_local, "child", None)
    if child is not None and child.process.poll() is not None:
        _retire(child)
        child = None
    if child is None:
        child = _local.child = _Child()
        with _children_lock:
            _children.add(child)
    return child


def _retire(child: _Child) -> None:
    """Forget a reader process and release its pipes and files."""
    if getattr(_local, "child", None) is child:
        _local.child = None
    with _children_lock:
        _children.discard(child)
    child.close()


def stop_reader() -> None:
    """Stop this thread's reader process, if it has one; the next read starts another."""
    child = getattr(_local, "child", None)
    if child is not None:
        _retire(child)


@atexit.register
def close_children() -> None:
    """Stop every reader process of this process (also run at exit)."""
    with _children_lock:
        children = list(_children)
        _children.clear()
    for child in children:
        child.close()


def read_isolated(reader: Callable[[str], pd.DataFrame], path: str) -> pa.Table:
    """``reader(path)`` run in this thread's reader process, as an Arrow table.

    ``reader`` must be a module-level function, so that the child can import it.

    Raises
    ------
    InputFileError
        With the reader's own reason if it raised one; "unreadable (...)" with the error
        for any other exception; "unreadable: the reader crashed (...)" with the exit
        status and last message if the child died reading the file.
    """
    child = _child()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "table.arrow"
        request = {"module": reader.__module__, "name": reader.__name__, "path": path, "out": str(out)}
        answer = child.ask(request)
        if answer is None:
            words = child.last_words()
            _retire(child)
            raise InputFileError(path, f"unreadable: the reader crashed ({words})")
        if answer["error"] is not None:
            raise InputFileError(path, answer["error"])
        return feather.read_table(out, memory_map=False)


def serve() -> None:
    """The child's loop: answer requests from stdin until it closes."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not among the answers
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        try:
            read = getattr(importlib.import_module(request["module"]), request["name"])
            table = pa.Table.from_pandas(read(request["path"]), preserve_index=False)
            feather.write_feather(table, request["out"])
            error = None
        except InputFileError as err:
            error = err.reason
        except Exception as err:
            error = f"unreadable ({type(err).__name__}: {err})"
        answers.write(json.dumps({"error": error}) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve()
