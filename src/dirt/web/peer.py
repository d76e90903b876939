"""Which user on this machine holds the other end of a loopback TCP connection (Linux).

A token-less write from loopback is audited under the name of the user whose process made the
connection: the kernel lists every TCP socket with its owner's uid in /proc/net/tcp and tcp6,
as `identd` reads it. Elsewhere (or when the socket is gone) the user is not known.
"""

from __future__ import annotations

import ipaddress
import pwd
import struct
from pathlib import Path

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def _candidates(host: str, port: int) -> list[str]:
    """`ADDR:PORT` as the kernel writes the client's end, IPv4 also as IPv4-mapped IPv6."""
    found = []
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return []
    forms = [address]
    if isinstance(address, ipaddress.IPv4Address):
        forms.append(ipaddress.IPv6Address(f"::ffff:{address}"))
    elif address.ipv4_mapped is not None:
        forms.append(address.ipv4_mapped)
    for form in forms:
        packed = form.packed
        words = struct.unpack(f"={len(packed) // 4}I", packed)
        found.append("".join(f"{w:08X}" for w in words) + f":{port:04X}")
    return found


def peer_uid(client: tuple[str, int], server: tuple[str, int] | None) -> int | None:
    """The uid owning the socket at `client` connected to `server`, or None."""
    ends = set(_candidates(*client))
    remote = set(_candidates(*server)) if server else None
    for table in TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[1] in ends and (remote is None or fields[2] in remote):
                try:
                    return int(fields[7])
                except ValueError:
                    return None
    return None


def peer_user(client: tuple[str, int], server: tuple[str, int] | None) -> str | None:
    """The name of the user behind a loopback connection, or None when not known."""
    uid = peer_uid(client, server)
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
