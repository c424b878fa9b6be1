"""API key administration (permission `keys`: admin only)."""

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Response

from libs.db import apikeys
from libs.http.auth import Authenticator, Caller
from services.api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut

KeyId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def apikeys_router(pool: asyncpg.Pool, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1/apikeys", tags=["api keys"])
    creator = Depends(auth.require("keys", "apikey.create"))
    lister = Depends(auth.require("keys", "apikey.list"))
    revoker = Depends(auth.require("keys", "apikey.revoke"))

    @router.post("", status_code=201, response_model=ApiKeyCreated)
    async def create_key(body: ApiKeyCreate, caller: Annotated[Caller, creator]) -> ApiKeyCreated:
        """Create a key. The response holds the key itself: it is shown this once."""
        async with pool.acquire() as conn, conn.transaction():
            key_id, plaintext = await apikeys.create_key(conn, body.role, body.name)
            key = await apikeys.get_key(conn, key_id)
        if key is None:  # pragma: no cover - read back in the same transaction
            raise RuntimeError(f"API key {key_id} vanished after creation")
        caller.saw(1)
        return ApiKeyCreated(**ApiKeyOut.model_validate(key).model_dump(), key=plaintext)

    @router.get("", response_model=list[ApiKeyOut])
    async def list_keys(caller: Annotated[Caller, lister]) -> list[ApiKeyOut]:
        """Every key, revoked ones included; never the keys themselves."""
        async with pool.acquire() as conn:
            keys = await apikeys.list_keys(conn)
        caller.saw(len(keys))
        return [ApiKeyOut.model_validate(k) for k in keys]

    @router.delete("/{key_id}", status_code=204)
    async def revoke_key(key_id: KeyId, caller: Annotated[Caller, revoker]) -> Response:
        """Revoke a key; it stops working at once."""
        async with pool.acquire() as conn:
            revoked = await apikeys.revoke_key(conn, key_id)
        caller.saw(1 if revoked else 0)
        if not revoked:
            raise HTTPException(status_code=404, detail="no such active API key")
        return Response(status_code=204)

    return router
