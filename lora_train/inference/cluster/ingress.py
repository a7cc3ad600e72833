"""The ingress deployment of `lora-serve deploy=ray`: lora-serve's own FastAPI app (server.create_app: the same
routes, auth, errors, playground and cards), built on each ingress replica over RemoteHost and RemoteEngine.
server.py hands create_app in (deploy.start's `create_app`), so this package never imports server.py, which
imports it.

Every response carries `x-lora-replica`: the engine replica(s) that generated it, or `ingress-<id>` for answers
the ingress gives itself (names, cards, /health, /metrics, errors found before any replica was asked).
"""

from __future__ import annotations

from lora_train.inference.cluster.remote import SERVED_BY, RemoteEngine, RemoteHost

HEADER = b"x-lora-replica"


class ReplicaHeader:
    """ASGI middleware: puts a fresh SERVED_BY list in each request's context and names it in the response."""

    def __init__(self, app, ingress: str):
        self.app, self.ingress = app, ingress

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        served_by: list[str] = []
        token = SERVED_BY.set(served_by)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                name = ",".join(served_by) or self.ingress
                message = {**message, "headers": [*message.get("headers", []), (HEADER, name.encode())]}
            await send(message)
        try:
            await self.app(scope, receive, send_with_header)
        finally:
            SERVED_BY.reset(token)


def ingress_class():
    import ray
    from ray import serve

    @serve.ingress()
    class Ingress:
        def __init__(self, engine_handle, job, api_key, model_cfg, board_name: str, namespace: str, create_app):
            from lora_train.model import load_tokenizer, resolve_model

            board = ray.get_actor(board_name, namespace=namespace)
            self.job, self.api_key, self.create_app = job, api_key, create_app
            self.engine = RemoteEngine(engine_handle, board, getattr(job.scheduler, "value", job.scheduler))
            self.host = RemoteHost(job, model_cfg.name, self.engine,
                                   tokenizer_of=lambda: load_tokenizer(resolve_model(model_cfg), model_cfg))
            self.name = "ingress-" + serve.get_replica_context().replica_id.unique_id

        def __serve_build_asgi_app__(self):
            app = self.create_app(self.host, self.engine, self.job, self.api_key)
            app.add_middleware(ReplicaHeader, ingress=self.name)
            return app

        def __del__(self):
            self.engine.close(0)

    return Ingress
