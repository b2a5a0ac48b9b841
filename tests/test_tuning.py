"""Process-wide download tuning: glibc's allocator keeps receive buffers' memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from mvbatch.downloads import tuning

glibc_only = pytest.mark.skipif(
    sys.platform != "linux" or not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
    reason="mallopt tuning applies to glibc only",
)

# Receives 32 MiB over a socket pair the way a download's bytes travel
# (256 KiB receives, a growing buffer, a copy handed on) and prints the page
# faults that took, in a fresh process: allocator settings are process-wide.
RECEIVE = textwrap.dedent(
    """
    import resource, socket, sys, threading
    from mvbatch.downloads import tuning
    if sys.argv[1] == "tuned":
        tuning.keep_buffer_memory()
    payload = b"v" * (32 << 20)
    a, b = socket.socketpair()
    sender = threading.Thread(target=lambda: (a.sendall(payload), a.close()))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    sender.start()
    buffer, received = bytearray(), 0
    while chunk := b.recv(256 << 10):
        buffer += chunk
        out = bytes(buffer)
        del buffer[: len(out)]
        received += len(out)
    sender.join()
    assert received == 32 << 20
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def page_faults(mode: str) -> int:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    done = subprocess.run(
        [sys.executable, "-c", RECEIVE, mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    return int(done.stdout)


@glibc_only
def test_tuned_allocator_stops_refaulting_receive_buffers() -> None:
    plain, tuned = page_faults("plain"), page_faults("tuned")
    # Untuned, nearly every 4 KiB page received is a fresh page fault (about
    # 7,000 for 32 MiB); tuned, the same buffers are reused (under 300).
    assert plain > 2_000
    assert tuned * 5 < plain, (plain, tuned)


class FakeMallopt:
    """Records calls; takes ctypes' argtypes and restype like a foreign function."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.argtypes: list[Any] = []
        self.restype: Any = None

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


class FakeLibc:
    def __init__(self) -> None:
        self.mallopt = FakeMallopt()

    @property
    def calls(self) -> list[tuple[int, int]]:
        return self.mallopt.calls


@pytest.fixture
def fake_libc(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLibc]:
    fake = FakeLibc()

    def cdll(name: Any) -> Any:
        assert name is None  # the running process's own C library, never another one
        return fake

    monkeypatch.setattr(tuning.ctypes, "CDLL", cdll)
    for name in [*tuning._MALLOC_ENVIRONMENT, "GLIBC_TUNABLES"]:
        monkeypatch.delenv(name, raising=False)
    tuning.keep_buffer_memory.cache_clear()  # applied once per process; each test starts anew
    yield fake
    tuning.keep_buffer_memory.cache_clear()


@glibc_only
def test_sets_mmap_and_trim_thresholds_once(fake_libc: FakeLibc) -> None:
    tuning.keep_buffer_memory()
    tuning.keep_buffer_memory()  # every Downloader asks; glibc is told once
    assert fake_libc.calls == [(-3, 1 << 20), (-1, 32 << 20)]


@glibc_only
def test_a_c_library_without_mallopt_is_left_alone(fake_libc: FakeLibc) -> None:
    del fake_libc.mallopt  # a static or embedded build that does not export it
    tuning.keep_buffer_memory()  # no AttributeError: the download goes on untuned


@glibc_only
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "1000000"),
        ("MALLOC_MMAP_THRESHOLD_", "65536"),
        ("MALLOC_TOP_PAD_", "0"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000000"),
    ],
)
def test_a_users_own_malloc_settings_are_kept(
    fake_libc: FakeLibc, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    tuning.keep_buffer_memory()
    assert fake_libc.calls == []


def test_nothing_happens_off_glibc(fake_libc: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_glibc(name: str) -> str | None:
        raise ValueError(name)  # what os.confstr says where the name is unknown (musl, macOS)

    monkeypatch.setattr(tuning.os, "confstr", not_glibc)
    tuning.keep_buffer_memory()
    assert fake_libc.calls == []
