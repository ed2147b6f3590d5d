"""CURVE secret-key files must be private, as ssh insists for its own keys.

Both ends load a ``zmq.auth`` ``.key_secret`` file (the daemon its server key,
a hook its microscope key); anyone who can read it can impersonate that end.
So a key readable or writable by group or others is refused, before it is used,
with the one command that fixes it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class KeyfileError(ValueError):
    """A secret-key file is missing or not private; the message says how to fix it."""


def check_secret_key(path: str | Path | None, error: type[Exception] = KeyfileError) -> None:
    """Raise ``error`` unless ``path`` (if given) is a secret-key file only its owner can access.

    POSIX only: on Windows, access is decided by ACLs, which mode bits do not
    describe, so nothing is checked there.
    """
    if path is None or os.name != "posix":
        return
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise error(
            f"secret key {path} does not exist; `lowdose keys DIR --name NAME` creates a key pair"
        ) from None
    if mode & 0o077:
        raise error(
            f"secret key {path} is accessible by others (mode {mode:04o}); a secret key must be "
            f"private to its owner: chmod 600 {path}"
        )
