"""The API key check: a dependency that names the caller's key, or refuses with 401."""

from __future__ import annotations

from fastapi import Depends, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .keys import KeyRing
from .state import State
from .uploads import error

header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key")
bearer = HTTPBearer(auto_error=False, description="The same key as a Bearer token")


class Unauthorized(Exception):
    pass


async def key_name(
    request: Request,
    state: State,
    given: str | None = Security(header_key),
    token: HTTPAuthorizationCredentials | None = Security(bearer),
) -> str:
    """The name of the request's key (X-API-Key, else Bearer), also kept on
    ``request.state.key_name``; :class:`Unauthorized` when it is none of the server's."""
    name = state.keys.check(given if given is not None else (token.credentials if token else None))
    if name is None:
        raise Unauthorized
    request.state.key_name = name
    return name


def guarded(keys: KeyRing) -> list:
    """A route's ``dependencies``: the key check where the server has keys, else none."""
    return [Depends(key_name)] if keys.enabled else []


async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
    """The 401 of :class:`Unauthorized` (an exception handler)."""
    detail = "missing API key, or not one of this server's (X-API-Key or Bearer)"
    return error(detail, 401, "unauthorized", headers={"WWW-Authenticate": "Bearer"})
