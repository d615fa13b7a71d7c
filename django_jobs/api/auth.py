"""Who is calling: an API token (``Authorization: Bearer …``) or a logged-in session.

Tokens are ``djj_`` and 43 random URL-safe characters (256 bits). Only the SHA-256
digest is stored, and the lookup is by digest: a database read never sees a token, and
a leaked table gives none away. A session is accepted when
``DJANGO_JOBS["API_SESSION_AUTH"]`` is on (the default), with the user's permissions
on jobs and, for POSTs, Django's CSRF check (a token is not an ambient credential, so
token calls need none).
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Any

from django.http import HttpRequest
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.utils.text import capfirst

from ..conf import jobs_settings
from ..models import ApiToken
from .errors import ApiError

TOKEN_PREFIX = "djj_"  # noqa: S105 - a marker, not a secret
#: last_used_at is written at most this often per token.
TOUCH_EVERY = timedelta(minutes=1)

#: Scope -> (token flag, permission a session user needs, what it allows: for messages).
SCOPES = {
    "read": ("can_read", "django_jobs.view_job", "read jobs"),
    "enqueue": ("can_enqueue", "django_jobs.add_job", "enqueue jobs"),
    "cancel": ("can_cancel", "django_jobs.cancel_job", "cancel jobs"),
    "metrics": ("can_scrape_metrics", "django_jobs.view_job", "scrape the metrics"),
}


def new_token() -> tuple[str, str, str]:
    """A fresh token, its displayable prefix, and the digest to store."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token[: len(TOKEN_PREFIX) + 6], digest(token)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Caller:
    """An authenticated caller: a token, or a user."""

    token: ApiToken | None = None
    user: Any = None

    @property
    def name(self) -> str:
        if self.token is not None:
            return f"token {self.token.name!r}"
        return f"user {self.user.get_username()!r}"

    def may(self, scope: str) -> bool:
        """Whether the caller may do ``scope`` (a key of SCOPES)."""
        flag, permission, _ = SCOPES[scope]
        if self.token is not None:
            return bool(getattr(self.token, flag))
        return bool(self.user.has_perm(permission))

    def require(self, scope: str, *or_scopes: str, action: str | None = None) -> None:
        """Raise 403 unless the caller may do ``scope``, or one of ``or_scopes``.

        ``action`` says what is refused (by default, what the scopes allow)."""
        scopes = (scope, *or_scopes)
        if any(self.may(s) for s in scopes):
            return
        action = action or " or ".join(SCOPES[s][2] for s in scopes)
        if self.token is not None:
            flags = " or ".join(repr(SCOPES[s][0]) for s in scopes)
            labels = " or ".join(
                repr(capfirst(ApiToken._meta.get_field(SCOPES[s][0]).verbose_name)) for s in scopes
            )
            raise ApiError(
                403,
                "missing_scope",
                f"The {self.name} may not {action}: it lacks the scope {flags}. Turn on "
                f"{labels} for it in the admin (API tokens), or use a token that has it.",
            )
        permissions = " or ".join(repr(SCOPES[s][1]) for s in scopes)
        raise ApiError(
            403,
            "missing_permission",
            f"The {self.name} may not {action}: it lacks the permission {permissions}.",
        )

    def covers(self, task_path: str) -> bool:
        """Whether the caller may act on jobs of ``task_path`` (a session: every task)."""
        if self.token is None:
            return True
        return any(fnmatchcase(task_path, pattern) for pattern in self.token.tasks or [])

    @property
    def all_tasks(self) -> bool:
        return self.token is None or "*" in (self.token.tasks or [])


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: HttpRequest, reason: str) -> str:  # type: ignore[override]
        return reason


def _csrf_failure(request: HttpRequest) -> str | None:
    check = _CsrfCheck(lambda r: None)  # type: ignore[arg-type]
    check.process_request(request)
    return check.process_view(request, None, (), {})  # type: ignore[arg-type, return-value]


def authenticate(request: HttpRequest) -> Caller:
    """The caller of ``request``; raise ApiError (401, 403) when there is none."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise _unauthorized(
                "bad_authorization", "The Authorization header must be 'Bearer <token>'."
            )
        token = ApiToken.objects.filter(digest=digest(value)).first()
        now = timezone.now()
        if token is None or not token.is_active or (token.expires_at and token.expires_at <= now):
            raise _unauthorized(
                "invalid_token",
                "The token is unknown, deactivated or expired; ask for a new one "
                "(API tokens in the admin).",
            )
        if token.last_used_at is None or now - token.last_used_at > TOUCH_EVERY:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return Caller(token=token)
    user = getattr(request, "user", None)
    if jobs_settings().API_SESSION_AUTH and user is not None and user.is_authenticated:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            reason = _csrf_failure(request)
            if reason:
                raise ApiError(
                    403,
                    "csrf_failed",
                    f"CSRF check failed ({reason}). A browser session must send the "
                    "X-CSRFToken header; other clients should use an API token.",
                )
        return Caller(user=user)
    raise _unauthorized(
        "not_authenticated",
        "Send 'Authorization: Bearer <token>' (API tokens are made in the admin), or log in.",
    )


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, WWW_Authenticate='Bearer realm="django_jobs"')
