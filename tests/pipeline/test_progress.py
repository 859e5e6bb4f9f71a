"""Progress lines while a step's tasks finish, on a real LocalCluster."""

import time

import pytest

from lcstore.pipeline.progress import gather


def _nap_then_give(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def test_results_come_in_the_order_of_the_tasks_not_of_their_ends(client):
    # The first tasks take longest, so they finish last.
    naps = [0.3, 0.2, 0.1, 0.0, 0.0, 0.0]
    futures = client.map(_nap_then_give, naps, range(6), pure=False)
    assert gather(futures, "values", lambda _: None) == list(range(6))


def test_progress_is_told_as_tasks_finish_and_not_after_the_last(client):
    futures = client.map(time.sleep, [0.02] * 6, pure=False)
    lines: list[str] = []
    assert gather(futures, "naps taken", lines.append, every=0) == [None] * 6
    assert len(lines) == 5
    assert [line.split(" of ")[0].strip() for line in lines] == ["1", "2", "3", "4", "5"]
    assert all(" of 6 naps taken (" in line for line in lines)


def test_quiet_when_the_step_is_shorter_than_the_interval(client):
    lines: list[str] = []
    gather(client.map(pow, range(5), [2] * 5, pure=False), "squares", lines.append, every=3600)
    assert lines == []


def test_a_failed_task_raises_its_own_error(client):
    futures = [client.submit(int, "12", pure=False), client.submit(int, "not a number", pure=False)]
    with pytest.raises(ValueError, match="not a number"):
        gather(futures, "numbers", lambda _: None)


def test_no_tasks_no_results():
    assert gather([], "anything", lambda _: None) == []
