"""Who may call a quantum gateway: Kubernetes ServiceAccount tokens checked with TokenReview.

A job sent to a gateway spends QPU time, so the gateway refuses by default. Callers send
``Authorization: Bearer <token>``, a projected ServiceAccount token minted for the audience
``qorch-gateway``. The gateway asks the apiserver (``authentication.k8s.io/v1`` TokenReview,
``spec.audiences=[audience]``) who the token belongs to, then checks that identity against an
allow-list of ServiceAccounts and namespaces. A token minted for the apiserver or any other
audience is refused, so a token leaked from one service cannot be replayed here.

Tokens are never logged or echoed; the cache of positive reviews is keyed by their SHA-256.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

log = logging.getLogger(__name__)

DEFAULT_AUDIENCE = "qorch-gateway"
# Probes and Prometheus reach these without a token; nothing here spends or reveals work.
OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/metrics"})
SA_PREFIX = "system:serviceaccount:"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class Review:
    """What the apiserver said about one token (never the token itself)."""

    authenticated: bool
    username: str = ""
    audiences: tuple[str, ...] = ()
    error: str = ""


class TokenReviewer(Protocol):
    """Blocking: the middleware runs it in a worker thread."""

    def review(self, token: str, audience: str) -> Review: ...


class ReviewUnavailableError(Exception):
    """The apiserver could not be asked; the caller should retry (HTTP 503)."""


class KubeTokenReviewer:
    """TokenReview through the Kubernetes API with the gateway's own credentials, which
    need ``create`` on ``tokenreviews.authentication.k8s.io`` and nothing else."""

    def __init__(self, api: Any, timeout_seconds: float = 10.0) -> None:
        self._api = api
        self._timeout = timeout_seconds

    @classmethod
    def from_config(cls, kubeconfig: str | None = None) -> KubeTokenReviewer:
        """In-cluster credentials when running in a pod, else ``kubeconfig`` / $KUBECONFIG."""
        from kubernetes import client, config

        configuration = client.Configuration()
        if kubeconfig is None:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return cls(client.AuthenticationV1Api(client.ApiClient(configuration)))

    def review(self, token: str, audience: str) -> Review:
        from kubernetes import client
        from urllib3.exceptions import HTTPError

        body = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=[audience])
        )
        try:
            result = self._api.create_token_review(body, _request_timeout=self._timeout)
        except client.ApiException as exc:
            hint = (
                ": the gateway's identity needs `create` on tokenreviews.authentication.k8s.io"
                if exc.status == 403
                else ""
            )
            raise ReviewUnavailableError(
                f"TokenReview answered {exc.status} {exc.reason}{hint}"
            ) from None
        except (HTTPError, OSError) as exc:
            raise ReviewUnavailableError(f"TokenReview failed: {exc}") from None
        status = result.status
        if status is None:
            return Review(authenticated=False, error="TokenReview returned no status")
        user = status.user
        return Review(
            authenticated=bool(status.authenticated),
            username=(user.username or "") if user is not None else "",
            audiences=tuple(status.audiences or ()),
            error=status.error or "",
        )


@dataclass(frozen=True)
class AllowList:
    """Usernames of allowed ServiceAccounts, and namespaces whose every ServiceAccount is
    allowed. Empty allows nobody."""

    service_accounts: frozenset[str] = frozenset()
    namespaces: frozenset[str] = frozenset()

    @classmethod
    def parse(
        cls, service_accounts: Iterable[str] = (), namespaces: Iterable[str] = ()
    ) -> AllowList:
        """``service_accounts`` as ``NAMESPACE/NAME``; raises ValueError naming the flag."""
        users: set[str] = set()
        for item in service_accounts:
            ns, sep, name = item.partition("/")
            if not sep or not _is_label(ns) or not _is_subdomain(name):
                raise ValueError(
                    f"--allow-serviceaccount {item!r}: expected NAMESPACE/NAME, "
                    "e.g. qorch-system/qorch-operator"
                )
            users.add(f"{SA_PREFIX}{ns}:{name}")
        spaces: set[str] = set()
        for ns in namespaces:
            if not _is_label(ns):
                raise ValueError(f"--allow-namespace {ns!r}: not a namespace name")
            spaces.add(ns)
        return cls(frozenset(users), frozenset(spaces))

    def __bool__(self) -> bool:
        return bool(self.service_accounts or self.namespaces)

    def permits(self, username: str) -> bool:
        if username in self.service_accounts:
            return True
        if not username.startswith(SA_PREFIX):
            return False
        ns, sep, name = username[len(SA_PREFIX) :].partition(":")
        return bool(sep and name) and ns in self.namespaces


def describe(username: str) -> str:
    """``service account NS/NAME`` for ServiceAccounts, ``user 'NAME'`` otherwise."""
    if username.startswith(SA_PREFIX):
        ns, sep, name = username[len(SA_PREFIX) :].partition(":")
        if sep:
            return f"service account {ns}/{name}"
    return f"user {username!r}"


class ReviewCache:
    """Authenticated usernames by SHA-256 of the token, for ``ttl_seconds`` at most (and no
    longer than the token's own ``exp``), least recently used evicted past ``max_entries``."""

    def __init__(
        self,
        ttl_seconds: float = 60.0,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, str]] = OrderedDict()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> str | None:
        key = self._key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, username = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return username

    def put(self, token: str, username: str) -> None:
        lifetime = self.ttl_seconds
        exp = _unverified_expiry(token)
        if exp is not None:
            lifetime = min(lifetime, exp - time.time())
        if lifetime <= 0:
            return
        key = self._key(token)
        self._entries[key] = (self._clock() + lifetime, username)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class AuthError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class TokenAuth:
    """Turns an ``Authorization`` header into an allowed username, or an ``AuthError``."""

    def __init__(
        self,
        reviewer: TokenReviewer,
        allow: AllowList,
        audience: str = DEFAULT_AUDIENCE,
        cache: ReviewCache | None = None,
    ) -> None:
        self.reviewer = reviewer
        self.allow = allow
        self.audience = audience
        self.cache = cache if cache is not None else ReviewCache()

    async def authenticate(self, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "missing bearer token: send `Authorization: Bearer <token>`")
        username = self.cache.get(token)
        if username is None:
            try:
                review = await asyncio.to_thread(self.reviewer.review, token, self.audience)
            except ReviewUnavailableError as exc:
                log.error("cannot verify a caller's token: %s", exc)
                raise AuthError(503, "cannot verify the token now; retry later") from None
            if not review.authenticated or not review.username:
                log.info("token refused by TokenReview: %s", review.error or "not authenticated")
                raise AuthError(
                    401,
                    "bearer token refused: not a valid ServiceAccount token for audience "
                    f"{self.audience!r}",
                )
            if self.audience not in review.audiences:
                log.info("token of %s lacks audience %r", describe(review.username), self.audience)
                raise AuthError(401, f"bearer token not valid for audience {self.audience!r}")
            username = review.username
            self.cache.put(token, username)
        if not self.allow.permits(username):
            who = describe(username)
            log.warning("refused %s: not in the gateway's allow-list", who)
            raise AuthError(403, f"{who} may not use this gateway")
        return username


def auth_middleware(auth: TokenAuth) -> Middleware:
    """aiohttp middleware: every path but ``OPEN_PATHS`` needs an allowed bearer token."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        try:
            await auth.authenticate(request.headers.get("Authorization"))
        except AuthError as exc:
            headers = {}
            if exc.status == 401:
                headers["WWW-Authenticate"] = f'Bearer realm="{auth.audience}"'
            elif exc.status == 503:
                headers["Retry-After"] = "5"
            return web.json_response({"detail": exc.detail}, status=exc.status, headers=headers)
        return await handler(request)

    return middleware


def _is_label(value: str) -> bool:
    return len(value) <= 63 and _DNS_LABEL.fullmatch(value) is not None


def _is_subdomain(value: str) -> bool:
    return len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value) is not None


def _unverified_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without checking the signature: only used to
    shorten how long the apiserver's verdict on it is cached."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)
