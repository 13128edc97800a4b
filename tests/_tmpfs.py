"""A small filesystem of one test's own, for full and read-only disks (the `make_tmpfs` fixture)."""

from __future__ import annotations

import subprocess
from pathlib import Path


class Tmpfs:
    """A small filesystem of one test's own (a tmpfs: mounting needs root, as CI has): a full disk, or a
    read-only one after `remount("ro")`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def remount(self, *options: str) -> None:
        subprocess.run(["mount", "-o", ",".join(["remount", *options]), str(self.path)], check=True,
                       capture_output=True)
