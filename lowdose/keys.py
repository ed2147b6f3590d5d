"""`lowdose keys`: a CURVE key pair whose secret half only its owner can read."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path


def key_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """Where ``zmq.auth`` puts the pair: ``name.key`` (public) and ``name.key_secret``."""
    return directory / f"{name}.key", directory / f"{name}.key_secret"


def create_key_pair(directory: Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new pair into ``directory``; an existing pair is kept unless ``force``.

    Returns (public, secret). The secret file is 0600; a folder created here is 0700.
    """
    import zmq.auth

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"key name {name!r} must be a plain file name, e.g. 'daemon' or 'scope1'")
    public, secret = key_paths(directory, name)
    existing = [p for p in (public, secret) if p.exists()]
    if existing and not force:
        raise FileExistsError(
            f"{existing[0]} exists; pass --force to replace the pair (everything trusting the old "
            "public key must then get the new one), or choose another --name"
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # zmq writes with the process umask; a private staging folder keeps the secret
    # unreadable until it is 0600 and moved into place.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=directory))
    try:
        new_public, new_secret = (Path(p) for p in zmq.auth.create_certificates(str(staging), name))
        os.chmod(new_secret, stat.S_IRUSR | stat.S_IWUSR)
        os.chmod(new_public, 0o644)
        os.replace(new_secret, secret)
        os.replace(new_public, public)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return public, secret


def folder_is_private(directory: Path) -> bool:
    """True when group and others have no access to ``directory`` (always True off POSIX)."""
    return os.name != "posix" or not stat.S_IMODE(directory.stat().st_mode) & 0o077
