"""lora-serve's admin routes: list the adapters, load one, unload one. An unload is refused (409) while requests of
that adapter run or wait, so no request loses its adapter mid-answer."""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at definition time.
from lora_train.errors import UserError
from lora_train.inference.api_errors import as_api_error
from lora_train.inference.batching import AdapterBusy
from lora_train.inference.registry import check_name


def mount(app, host, batcher, authorize, read_name) -> None:
    """Add /admin/adapters (GET), /admin/adapters/load and /admin/adapters/unload (POST {"name": ...}).
    `authorize` is the server's key check; `read_name` reads and validates a request's body into the name."""
    from fastapi import Depends, Request
    from starlette.concurrency import run_in_threadpool

    # deploy=ray's engine has no `unload`: there the board applies it on every replica (cluster/board.py).
    unload = getattr(batcher, "unload", host.unload)

    async def admin(request: Request, action):
        name = await read_name(request)
        try:
            check_name(name)
            return await run_in_threadpool(action, name)
        except (UserError, AdapterBusy) as e:
            raise as_api_error(e) from None

    @app.get("/admin/adapters", dependencies=[Depends(authorize)])
    async def admin_list():
        return {"base": host.base_name, "adapters": await run_in_threadpool(host.names), "resident": host.resident()}

    @app.post("/admin/adapters/load", dependencies=[Depends(authorize)])
    async def admin_load(request: Request):
        return await admin(request, lambda n: (host.load(n), {"name": n, "resident": True})[1])

    @app.post("/admin/adapters/unload", dependencies=[Depends(authorize)])
    async def admin_unload(request: Request):
        return await admin(request, lambda n: {"name": n, "was_resident": unload(n), "resident": False})
