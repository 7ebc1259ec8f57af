"""EC key pairs in OpenSSH format, as Flower's SuperNode authentication expects them.

The same as ``ssh-keygen -t ecdsa -b 384 -N ""``, without needing OpenSSH installed: the private
key is given to ``flower-supernode --auth-supernode-private-key``, the public key to
``flwr supernode register``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def write_ec_keypair(path: Path) -> tuple[Path, Path]:
    """Write ``path`` (private, mode 0600) and ``path.pub``; return both paths."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public_path = path.with_name(path.name + ".pub")
    public_path.write_bytes(public + f" {path.name}\n".encode())
    return path, public_path
