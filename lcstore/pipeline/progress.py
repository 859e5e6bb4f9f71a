"""Progress of a build's Dask tasks, told to the operator as they finish.

A ZTF-scale build runs for hours; a step's tasks number in the thousands. Instead of
waiting silently for all of a step's results, the build collects them as they finish
and says how far it is at most every :data:`PROGRESS_SECONDS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from distributed import Future, as_completed

#: Least seconds between two progress lines of one step.
PROGRESS_SECONDS = 30.0


def gather(
    futures: list[Future],
    what: str,
    say: Callable[[str], None],
    every: float = PROGRESS_SECONDS,
    each: Callable[[Any], None] | None = None,
) -> list:
    """The results of ``futures``, in their order, telling ``say`` how many are done.

    Parameters
    ----------
    futures : list of distributed.Future
    what : str
        What a finished task is, for the progress line ("work pixels matched").
    say : callable
        Receives the progress lines.
    every : float
        Least seconds between two lines; none is said once every task is done.
    each : callable, optional
        Called with each result as it arrives (in the order the tasks finish), before
        the next is waited for.

    Raises
    ------
    Exception
        The error of the first task found failed, as ``Client.gather`` raises it.
    """
    position = {future.key: i for i, future in enumerate(futures)}
    results: list = [None] * len(futures)
    start = last = time.monotonic()
    for done, future in enumerate(as_completed(futures), start=1):
        results[position[future.key]] = future.result()
        if each is not None:
            each(results[position[future.key]])
        now = time.monotonic()
        if now - last >= every and done < len(futures):
            say(f"  {done:,} of {len(futures):,} {what} ({now - start:.0f}s)")
            last = now
    return results
