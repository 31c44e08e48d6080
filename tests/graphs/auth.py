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


def _team(ctx: Auth.types.AuthContext) -> str:
    return "blue" if ctx.user.identity.startswith("b") else "red"


@auth.on.assistants.create
async def own_assistants(ctx: Auth.types.AuthContext, value: dict) -> None:
    value["metadata"]["owner"] = ctx.user.identity


@auth.on.assistants
async def see_own_assistants(ctx: Auth.types.AuthContext, value: dict) -> dict:
    return {"owner": ctx.user.identity}


@auth.on.assistants.update
async def viewers_keep_assistants_as_they_are(ctx: Auth.types.AuthContext, value: dict) -> dict | bool:
    if ctx.user.identity.startswith("viewer"):
        return False
    return {"owner": ctx.user.identity}


@auth.on.crons.create
async def label_crons(ctx: Auth.types.AuthContext, value: dict) -> None:
    value["metadata"]["team"] = _team(ctx)


@auth.on.crons
async def see_own_team_crons(ctx: Auth.types.AuthContext, value: dict) -> dict:
    return {"team": _team(ctx)}


@auth.on.crons.update
async def viewers_keep_crons_as_they_are(ctx: Auth.types.AuthContext, value: dict) -> dict | bool:
    if ctx.user.identity.startswith("viewer"):
        return False
    return {"team": _team(ctx)}
