"""Access control for a served repository: which of Triton's APIs need a header, and TLS.

tritonserver 2.51 (the one nvidia-pytriton bundles) can refuse requests to chosen API groups
unless they carry a header with a given value (``--http-restricted-api`` /
``--grpc-restricted-protocol``, both given the same groups here), and can serve gRPC over TLS
(``--grpc-use-ssl``, or mutual TLS with ``--grpc-use-ssl-mutual``). It has no TLS for HTTP and
no access control at all for the metrics port: put HTTP behind an authenticating TLS proxy,
and keep the metrics port off untrusted networks (or turn it off). See README "Security".

:class:`Restriction` is one group (``APIS:HEADER=VALUE``); :func:`api_key_restriction` is
``ragrt serve --api-key-file``'s: every API but ``health`` behind the ``ragrt-api-key``
header, so that orchestrator probes still work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ragrt.errors import InputError

#: the API groups tritonserver 2.51 can restrict (its --help)
APIS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
#: the header that carries ``ragrt serve --api-key-file``'s key (``RagClient(api_key=...)``)
API_KEY_HEADER = "ragrt-api-key"


@dataclass(frozen=True)
class Restriction:
    """Requests to ``apis`` are refused unless header ``header`` is ``value``."""

    apis: tuple[str, ...]
    header: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Restriction:
        """``APIS:HEADER=VALUE``, APIS comma-separated (e.g.
        ``model-repository,shared-memory:admin-key=s3cret``)."""
        apis, sep, rest = text.partition(":")
        header, eq, value = rest.partition("=")
        if not sep or not eq:
            raise InputError(
                f"--restrict takes APIS:HEADER=VALUE (e.g. model-repository:admin-key=SECRET), "
                f"got {text!r}"
            )
        return cls.of([a.strip() for a in apis.split(",") if a.strip()], header, value)

    @classmethod
    def of(cls, apis: Sequence[str], header: str, value: str) -> Restriction:
        bad = [a for a in apis if a not in APIS]
        if not apis or bad:
            raise InputError(
                f"unknown API group(s) {', '.join(bad) or '(none given)'}: choose from "
                + ", ".join(APIS)
            )
        header = header.strip().lower()  # gRPC metadata keys are lower case
        if not header or any(c.isspace() or c in ":=," for c in header):
            raise InputError(f"bad header name {header!r} in a restriction")
        if not value or any(c.isspace() or c == "," for c in value) or not value.isprintable():
            raise InputError(
                f"the value for header {header!r} must be non-empty printable text without "
                "spaces or commas"
            )
        return cls(tuple(dict.fromkeys(apis)), header, value)

    def flag_value(self) -> str:
        return f"{','.join(self.apis)}:{self.header}={self.value}"


def api_key_restriction(key: str, taken: Sequence[Restriction] = ()) -> Restriction:
    """Every API group except ``health`` and those ``taken`` by other restrictions behind
    :data:`API_KEY_HEADER`."""
    used = {a for r in taken for a in r.apis}
    apis = [a for a in APIS if a != "health" and a not in used]
    return Restriction.of(apis, API_KEY_HEADER, key)


def read_key_file(path: str | os.PathLike) -> str:
    """The API key in ``path`` (surrounding whitespace dropped): a file, so that the key is
    not on ragrt's command line."""
    p = Path(path)
    try:
        key = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the API key file {p}: {e}") from None
    if not key:
        raise InputError(f"the API key file {p} is empty")
    return key


def check_restrictions(restrictions: Sequence[Restriction]) -> list[Restriction]:
    """No API group in two restrictions (tritonserver would refuse to start)."""
    seen: dict[str, str] = {}
    for r in restrictions:
        for a in r.apis:
            if a in seen:
                raise InputError(
                    f"API group {a!r} is restricted twice (headers {seen[a]!r} and {r.header!r})"
                )
            seen[a] = r.header
    return list(restrictions)


@dataclass(frozen=True)
class GrpcTls:
    """gRPC over TLS: the server's certificate and key (PEM); with ``client_ca``, mutual TLS
    (clients must present a certificate that CA signed)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def of(
        cls,
        cert: str | os.PathLike | None,
        key: str | os.PathLike | None,
        client_ca: str | os.PathLike | None = None,
    ) -> GrpcTls | None:
        if cert is None and key is None and client_ca is None:
            return None
        if cert is None or key is None:
            raise InputError("gRPC TLS needs both --grpc-tls-cert and --grpc-tls-key (PEM files)")
        paths = [Path(cert), Path(key)] + ([Path(client_ca)] if client_ca else [])
        for p in paths:
            if not p.is_file():
                raise InputError(f"TLS file {p} does not exist")
        return cls(
            paths[0].resolve(), paths[1].resolve(), paths[2].resolve() if client_ca else None
        )

    def args(self) -> list[str]:
        out = [
            "--grpc-use-ssl-mutual" if self.client_ca else "--grpc-use-ssl",
            "true",
            "--grpc-server-cert",
            str(self.cert),
            "--grpc-server-key",
            str(self.key),
        ]
        if self.client_ca:
            out += ["--grpc-root-cert", str(self.client_ca)]
        return out


def server_args(
    restrictions: Sequence[Restriction], tls: GrpcTls | None, metrics: bool = True
) -> list[str]:
    """The tritonserver flags for these settings."""
    out: list[str] = []
    for r in check_restrictions(restrictions):
        out += [
            f"--http-restricted-api={r.flag_value()}",
            f"--grpc-restricted-protocol={r.flag_value()}",
        ]
    if tls is not None:
        out += tls.args()
    if not metrics:
        out += ["--allow-metrics", "false"]
    return out
