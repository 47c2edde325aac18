"""Where a ragrt server is (``host:port`` plus protocol, parsed from what a user types) and
what a client shows it (:class:`Credentials`: headers such as an API key, TLS files)."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Credentials:
    """What a client shows the server: headers sent with every request (``api_key`` becomes
    ``ragrt-api-key``, the header ``ragrt serve --api-key-file`` checks), and for gRPC over
    TLS the PEM files: ``root_certificates`` (the CA that signed the server's certificate;
    default: the system's), ``private_key`` + ``certificate_chain`` (mutual TLS)."""

    headers: tuple[tuple[str, str], ...] = ()
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None

    @classmethod
    def of(
        cls,
        *,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        root_certificates: str | os.PathLike | None = None,
        private_key: str | os.PathLike | None = None,
        certificate_chain: str | os.PathLike | None = None,
    ) -> Credentials:
        h: dict[str, str] = {}
        for k, v in (headers or {}).items():
            if not isinstance(k, str) or not isinstance(v, str) or not k.strip():
                raise InputError(f"headers must map names to strings, got {k!r}: {v!r}")
            h[k.strip().lower()] = v
        if api_key is not None:
            if not isinstance(api_key, str) or not api_key.strip():
                raise InputError("api_key must be a non-empty string")
            h["ragrt-api-key"] = api_key.strip()
        if (private_key is None) != (certificate_chain is None):
            raise InputError("mutual TLS needs both private_key and certificate_chain")
        files = []
        for p in (root_certificates, private_key, certificate_chain):
            if p is not None and not Path(p).is_file():
                raise InputError(f"TLS file {p} does not exist")
            files.append(None if p is None else str(p))
        return cls(tuple(h.items()), *files)

    @property
    def tls_files(self) -> bool:
        return any((self.root_certificates, self.private_key, self.certificate_chain))

    def header_dict(self) -> dict[str, str] | None:
        return dict(self.headers) or None

    def secure(self, endpoint: Endpoint) -> Endpoint:
        """``endpoint`` over TLS when TLS files were given (gRPC only: tritonserver has no
        HTTPS; HTTPS is a proxy's, reached with an ``https://`` URL)."""
        if not self.tls_files:
            return endpoint
        if endpoint.protocol != "grpc":
            raise InputError(
                "TLS certificates are for gRPC (tritonserver serves HTTP without TLS): use a "
                "grpc:// URL, or an https:// URL of a TLS proxy without these files"
            )
        return Endpoint(endpoint.host_port, endpoint.protocol, ssl=True)
