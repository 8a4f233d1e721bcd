"""A pass-through FUSE file system that answers EIO for chosen byte ranges of chosen files: a
disk with bad sectors, for the storage-fault tests (`python -m tests.runtime.integrity.eio_fs
SRC MOUNTPOINT RANGES.json`; RANGES.json: [[file name, start, end], ...], re-read on every read
so a test can move the bad sectors while a model runs).

The bad ranges are whole pages away from any other tensor, and every reader of the bundle
reads without readahead (MADV_RANDOM, FADV_RANDOM), so no good page shares a failed request.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import mfusepy as fuse


class EioFS(fuse.Operations):
    use_ns = True

    def __init__(self, root: Path, ranges: Path) -> None:
        self.root, self.ranges = root, ranges

    def _bad(self, name: str, offset: int, size: int) -> bool:
        try:
            table = json.loads(self.ranges.read_text())
        except (OSError, ValueError):
            return False
        return any(f == name and offset < end and offset + size > start
                   for f, start, end in table)

    def getattr(self, path, fh=None):
        st = os.lstat(self.root / path.lstrip("/"))
        out = {k: getattr(st, k) for k in ("st_gid", "st_mode", "st_nlink", "st_size", "st_uid")}
        return out | {k: getattr(st, k + "_ns") for k in ("st_atime", "st_mtime", "st_ctime")}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self.root / path.lstrip("/"))]

    def open(self, path, flags):
        return os.open(self.root / path.lstrip("/"), os.O_RDONLY)

    def read(self, path, size, offset, fh):
        if self._bad(path.lstrip("/"), offset, size):
            raise fuse.FuseOSError(errno.EIO)
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        os.close(fh)
        return 0


def main() -> None:
    src, mnt, ranges = (Path(a) for a in sys.argv[1:4])
    fuse.FUSE(EioFS(src, ranges), str(mnt), foreground=True, ro=True)


if __name__ == "__main__":
    main()
