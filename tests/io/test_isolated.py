"""Reading in a long-lived child process: same table as in-process, one child reused,
a crash quarantines only the file that caused it."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest

from lcstore.errors import InputFileError
from lcstore.io import isolated
from lcstore.io.isolated import read_isolated
from lcstore.io.ztf_products import read_matchfile_epochs

MATCHFILE = "ztf_000269_zr_c10_q1_match.pytable"
#: This byte of that real matchfile, so changed, makes HDF5 crash its reader (SIGSEGV).
CRASHING_BYTE = (974, 0x9F)


@pytest.fixture
def matchfile(real_data_dir: Path) -> Path:
    return real_data_dir / "ztf" / "matchfiles" / MATCHFILE


@pytest.fixture(autouse=True)
def fresh_children():
    isolated.close_children()
    yield
    isolated.close_children()


def _pid() -> int:
    return isolated._local.child.process.pid


def test_the_child_reads_what_the_reader_reads_and_is_reused(matchfile: Path) -> None:
    first = read_isolated(read_matchfile_epochs, str(matchfile))
    pid = _pid()
    second = read_isolated(read_matchfile_epochs, str(matchfile))
    assert _pid() == pid
    expected = pa.Table.from_pandas(read_matchfile_epochs(str(matchfile)), preserve_index=False)
    assert first.equals(expected) and second.equals(expected)
    assert first.num_rows == 101


def test_a_crash_refuses_its_file_and_the_next_file_is_read(matchfile: Path, tmp_path: Path) -> None:
    position, value = CRASHING_BYTE
    data = bytearray(matchfile.read_bytes())
    data[position] = value
    crashing = tmp_path / MATCHFILE
    crashing.write_bytes(bytes(data))
    read_isolated(read_matchfile_epochs, str(matchfile))
    pid = _pid()
    with pytest.raises(InputFileError, match=r"the reader crashed \(exit -11") as refused:
        read_isolated(read_matchfile_epochs, str(crashing))
    assert refused.value.path == str(crashing)
    assert read_isolated(read_matchfile_epochs, str(matchfile)).num_rows == 101
    assert _pid() != pid


def test_the_readers_own_refusal_and_other_errors_name_the_file(matchfile: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pytable"
    truncated.write_bytes(matchfile.read_bytes()[:5000])
    with pytest.raises(InputFileError) as refused:
        read_isolated(read_matchfile_epochs, str(truncated))
    assert refused.value.path == str(truncated)
    assert refused.value.reason == _reason_in_process(str(truncated))


def _reason_in_process(path: str) -> str:
    try:
        read_matchfile_epochs(path)
    except InputFileError as err:
        return err.reason
    raise AssertionError(f"{path} was read")


def test_each_thread_has_its_own_child(matchfile: Path) -> None:
    pids: list[int] = []

    def read() -> None:
        read_isolated(read_matchfile_epochs, str(matchfile))
        pids.append(_pid())

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(pids)) == 2
    assert len(isolated._children) == 2


def test_stop_reader_ends_this_threads_child(matchfile: Path) -> None:
    read_isolated(read_matchfile_epochs, str(matchfile))
    process = isolated._local.child.process
    isolated.stop_reader()
    assert process.poll() is not None and not isolated._children
    assert read_isolated(read_matchfile_epochs, str(matchfile)).num_rows == 101
