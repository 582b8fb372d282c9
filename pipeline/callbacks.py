"""Job callbacks that cannot be turned against the inside of the network, and that a receiver can verify.

A client names a URL; the service POSTs the job's status there when the job ends. Left open,
that is a request forgery tool: a URL naming a cloud metadata address, the Ray dashboard or a
database makes the server call it. So:

- only ``https`` (``http`` only when the operator allows it);
- every address the host resolves to must be a public unicast address: loopback, private,
  link-local (cloud metadata), carrier-grade NAT, multicast, reserved and unspecified ranges
  are refused, IPv4-mapped IPv6 included, unless the host or its address is on the operator's
  allow-list;
- the check is made when the job is accepted and again when the callback is sent, and the
  connection goes to the very address that was checked (a DNS answer that changes in between
  cannot redirect it); redirects are never followed;
- a bounded number of tries with back-off; a 4xx answer is not retried;
- the body is signed: ``X-Pose-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
  with the operator's secret, so a receiver can check who sent it and when.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from .errors import InputError

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Pose-Signature"
MAX_URL_LENGTH = 2048
# Not global unicast, or not safe to call, beyond what `ipaddress` flags as non-global.
_ALWAYS_BLOCKED = [ipaddress.ip_network(n) for n in ("100.64.0.0/10", "192.0.0.0/24", "fd00:ec2::/32")]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


@dataclass(frozen=True)
class CallbackPolicy:
    """What callback URLs may name, and how they are called."""

    allow_http: bool = False  # plain http (e.g. a receiver inside a trusted network)
    allow_hosts: tuple[str, ...] = ()  # host names, addresses or CIDR ranges allowed even if internal
    secret: bytes | None = None  # HMAC key of the signature header; None: unsigned
    timeout_s: float = 5.0
    tries: int = 3
    backoff_s: float = 1.0  # first wait between tries, doubled after each
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nets = []
        for entry in self.allow_hosts:
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                continue  # a host name: compared by name
        object.__setattr__(self, "_networks", tuple(nets))

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in {h.lower().rstrip(".") for h in self.allow_hosts}

    def address_allowed(self, addr: Address) -> bool:
        return any(addr in net for net in self._networks if net.version == addr.version)


@dataclass(frozen=True)
class Target:
    """A checked callback URL: where to connect (the checked address) and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def is_public(addr: Address) -> bool:
    """A public unicast address (what a callback may reach without the allow-list)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return is_public(addr.ipv4_mapped)
    if not addr.is_global or addr.is_multicast or addr.is_reserved or addr.is_unspecified:
        return False
    return not any(addr in net for net in _ALWAYS_BLOCKED if net.version == addr.version)


def check_url(url: str, policy: CallbackPolicy, resolve: Resolver = _resolve) -> Target:
    """The URL as a `Target`, or `InputError` ``callback_url_forbidden`` / ``invalid_callback_url``."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InputError("invalid_callback_url", f"expected an https URL of at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputError("invalid_callback_url", f"the callback URL cannot be parsed: {exc}") from exc
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if policy.allow_http else ("https",)
    if scheme not in allowed:
        raise InputError("invalid_callback_url", f"expected a callback URL with scheme {' or '.join(allowed)}, got {scheme or 'none'!r}")
    host = parts.hostname
    if not host or parts.username is not None or parts.password is not None:
        raise InputError("invalid_callback_url", "expected a callback URL with a host and no user name or password")
    port = port or (443 if scheme == "https" else 80)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise InputError("callback_url_unresolvable", f"the callback host {host!r} does not resolve: {exc}") from exc
    if not addresses:
        raise InputError("callback_url_unresolvable", f"the callback host {host!r} does not resolve")
    named = policy.host_allowed(host)
    for text in addresses:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
        if not (named or is_public(addr) or policy.address_allowed(addr)):
            raise InputError(
                "callback_url_forbidden",
                f"the callback host {host!r} resolves to {addr}, an internal address; callbacks go to public "
                "addresses only unless the operator allows the host",
            )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, host, port, path, addresses[0])


def signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, *, tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """What a receiver runs: the header is ours, for this body, and recent."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, body, timestamp), header)


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the checked address, whatever the host name resolves to now."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """TLS to the checked address, the certificate checked against the URL's host name."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post(url: str, body: bytes, policy: CallbackPolicy, resolve: Resolver = _resolve) -> int:
    """POST ``body`` (JSON) to ``url`` under ``policy``; the final HTTP status.

    Raises `InputError` when the URL is (now) refused, `OSError` / `http.client.HTTPException`
    when every try failed."""
    delay = policy.backoff_s
    last: Exception | None = None
    for attempt in range(1, max(1, policy.tries) + 1):
        target = check_url(url, policy, resolve)  # again at every try: no DNS rebinding
        headers = {"Content-Type": "application/json", "User-Agent": "pose-service"}
        if policy.secret:
            headers[SIGNATURE_HEADER] = signature(policy.secret, body, int(time.time()))
        conn = (_PinnedHTTPS if target.scheme == "https" else _PinnedHTTP)(target, policy.timeout_s)
        try:
            conn.request("POST", target.path, body=body, headers=headers)
            status, last = conn.getresponse().status, None
        except (OSError, http.client.HTTPException) as exc:
            last, status = exc, None
        finally:
            conn.close()
        if status is not None and status < 500:
            return status  # 2xx done; 3xx (never followed) and 4xx are the receiver's answer
        logger.info("callback try %d of %d failed: %s", attempt, policy.tries, last or f"HTTP {status}")
        if attempt < policy.tries:
            time.sleep(delay)
            delay *= 2
    if last is not None:
        raise last
    return int(status)  # type: ignore[arg-type]
