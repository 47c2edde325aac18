"""Where a ragrt server is: ``host:port`` plus protocol, parsed from what a user types."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from ragrt.errors import InputError

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001


@dataclass(frozen=True)
class Endpoint:
    host_port: str
    protocol: str  # grpc | http
    ssl: bool = False


def parse_url(url: str, protocol: str | None = None) -> Endpoint:
    """``host:port``, ``grpc://host:port``, ``http(s)://host:port`` -> endpoint.

    The protocol comes from ``protocol``, else the scheme, else the port (8000 -> http),
    else gRPC.
    """
    if not isinstance(url, str) or not url.strip():
        raise InputError("the server URL is empty: pass host:port (e.g. localhost:8001)")
    if protocol is not None and protocol not in ("grpc", "http"):
        raise InputError(f"unknown protocol {protocol!r}: choose grpc or http")
    scheme, rest = _split_scheme(url)
    try:
        parsed = urllib.parse.urlsplit("//" + rest)
        port = parsed.port
    except ValueError:
        raise InputError(f"bad port in server URL {url!r}") from None
    if not parsed.hostname:
        raise InputError(f"no host in server URL {url!r}")
    proto = protocol
    if proto is None and scheme is not None:
        proto = "http" if scheme.startswith("http") else "grpc"
    if proto is None:
        proto = "http" if port in (DEFAULT_HTTP_PORT, 80, 443) else "grpc"
    if port is None:
        rest = f"{rest}:{DEFAULT_HTTP_PORT if proto == 'http' else DEFAULT_GRPC_PORT}"
    return Endpoint(rest, proto, ssl=scheme in ("https", "grpcs"))


def _split_scheme(url: str) -> tuple[str | None, str]:
    """``(scheme or None, host[:port])``; a path after the host is an error."""
    u = url.strip()
    scheme = None
    if "://" in u:
        scheme, u = u.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("grpc", "http", "https", "grpcs"):
            raise InputError(f"unknown URL scheme {scheme!r} in {url!r}: use grpc:// or http://")
    u = u.rstrip("/")
    if "/" in u:
        raise InputError(f"the server URL {url!r} must be host:port, without a path")
    return scheme, u
