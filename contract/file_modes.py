"""The permissions a published bundle gets: what `mkdir` and `open()` would have given it.

Bundles are built in `tempfile.mkdtemp` folders (mode 0700) and the manifest is written through
`tempfile.mkstemp` (0600), both private on purpose while the bundle is incomplete. Published
as is, a bundle packed by one user could not be opened by another (a kiosk's service account).
So, just before a bundle becomes visible, its folders get 0777 & ~umask and its files
0666 & ~umask (0755 / 0644 under the usual umask 022), as if created by `mkdir` and `open()`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the kernel reports it (Linux 4.7+);
    elsewhere set-and-restore under a lock (the umask is process-wide)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def published_modes() -> tuple[int, int]:
    """(folder mode, file mode) under the current umask."""
    mask = current_umask()
    return 0o777 & ~mask, 0o666 & ~mask


def publish_modes(folder: Path) -> None:
    """Give `folder`, every folder below it and every regular file in them the modes `mkdir`
    and `open()` would have; symlinks are left alone (their target is not ours to change)."""
    dir_mode, file_mode = published_modes()
    for root, dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, file_mode)
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, dir_mode)
    os.chmod(folder, dir_mode)
