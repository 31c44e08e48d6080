"""A custom authentication hook in LangGraph Platform's shape, for the auth tests."""

from langgraph_sdk import Auth

auth = Auth()


@auth.authenticate
async def authenticate(authorization: str | None, path: str) -> dict:
    if not authorization or not authorization.startswith("Bearer token-"):
        raise Auth.exceptions.HTTPException(status_code=401, detail=f"no valid token for {path}")
    return {"identity": authorization.removeprefix("Bearer token-"), "permissions": []}
