"""A custom authentication hook in LangGraph Platform's shape, for the auth tests."""

from langgraph_sdk import Auth

auth = Auth()


@auth.authenticate
async def authenticate(authorization: str | None, path: str) -> dict:
    if not authorization or not authorization.startswith("Bearer token-"):
        raise Auth.exceptions.HTTPException(status_code=401, detail=f"no valid token for {path}")
    return {"identity": authorization.removeprefix("Bearer token-"), "permissions": []}


@auth.on.threads.create
async def label_threads(ctx: Auth.types.AuthContext, value: dict) -> None:
    value["metadata"]["team"] = "blue" if ctx.user.identity.startswith("b") else "red"


@auth.on.threads.delete
async def keep_archived(ctx: Auth.types.AuthContext, value: dict) -> bool:
    return ctx.user.identity != "auditor"  # the auditor may read but never delete


@auth.on.store
async def scope_store(ctx: Auth.types.AuthContext, value: dict) -> None:
    namespace = tuple(value["namespace"])
    if not namespace or namespace[0] != ctx.user.identity:
        value["namespace"] = (ctx.user.identity, *namespace)
