"""The storage pool's btrfs ioctls leave the interpreter free while they wait.

A snapshot waits for a transaction commit; a quota limit or a subvolume's creation may wait
behind someone else's. The server makes them on worker threads, and its event loop must keep
serving meanwhile: the ioctl must not hold the interpreter lock. Freezing the pool makes a
snapshot block inside the kernel for as long as the test wants; the test's own thread must still
run Python code (and thaw the pool).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hutch.runtime.runc._storage import StoragePool

pytestmark = pytest.mark.root

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)

#: Runs in a child, so that an ioctl holding the interpreter lock hangs the child, not pytest.
CHILD = textwrap.dedent(
    """
    import fcntl, os, sys, threading, time
    from pathlib import Path
    from hutch.runtime.runc import _storage

    root = Path(sys.argv[1])
    FIFREEZE, FITHAW = 0xC0045877, 0xC0045878
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.ioctl(fd, FIFREEZE, 0)
    done = threading.Event()
    def snapshot():
        _storage._snapshot(root / "src", root, "copy", readonly=True)
        done.set()
    worker = threading.Thread(target=snapshot)
    worker.start()
    time.sleep(0.3)  # the worker is inside the ioctl, waiting for the thaw
    blocked = not done.is_set()
    spins = sum(1 for _ in range(100_000))  # Python code runs meanwhile
    fcntl.ioctl(fd, FITHAW, 0)
    worker.join(10)
    print(blocked, spins, done.is_set(), (root / "copy" / "file").read_text())
    """
)


def test_a_snapshot_waiting_in_the_kernel_leaves_other_threads_running(tmp_path: Path) -> None:
    pool = StoragePool(tmp_path, 256 << 20)
    pool.open()
    try:
        src = pool.root / "src"
        subprocess.run(["btrfs", "subvolume", "create", str(src)], check=True, capture_output=True)
        (src / "file").write_text("kept\n")
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(pool.root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            stdout, stderr = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # The child's snapshot waits in the kernel for the thaw its main thread never got
            # to make: thaw here, or it cannot even be killed.
            thaw(pool.root)
            child.kill()
            child.communicate()
            pytest.fail("the snapshot's ioctl held the interpreter lock: nothing else ran")
        assert child.returncode == 0, stderr
        assert stdout.split() == ["True", "100000", "True", "kept"]
    finally:
        thaw(pool.root)
        subprocess.run(["umount", "-l", str(pool.root)], check=False)


def thaw(root: Path) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    except OSError:
        pass  # not frozen
    finally:
        os.close(fd)
