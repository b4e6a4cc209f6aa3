"""Triton replicas behind one DNS name: a Kubernetes headless Service resolves to one address per ready pod.

Connecting by name would pin every keep-alive connection to whichever pod the name gave first; the pool instead
keeps one endpoint per address and re-resolves the name now and then, so new pods take requests and gone ones leave.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket


def split_url(url: str) -> tuple[str, int]:
    """(host without brackets, port) of a checked HOST:PORT or http://HOST:PORT."""
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    return host.strip("[]"), int(port)


def is_address(url: str) -> bool:
    """True when the URL names an IP address, which needs no resolving."""
    try:
        ipaddress.ip_address(split_url(url)[0])
    except ValueError:
        return False
    return True


async def resolve(url: str) -> list[str]:
    """Every "ADDRESS:PORT" the URL's host resolves to, sorted; an address URL unchanged. OSError (socket.gaierror)
    when the name does not resolve."""
    if is_address(url):
        return [url]
    host, port = split_url(url)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = sorted({info[4][0] for info in infos}, key=lambda a: (":" in a, ipaddress.ip_address(a)))
    return [f"[{address}]:{port}" if ":" in address else f"{address}:{port}" for address in addresses]
