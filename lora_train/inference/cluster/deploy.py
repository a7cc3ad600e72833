"""Start, wait for and stop the Ray Serve application of `lora-serve deploy=ray`.

`start(job)` connects to Ray (a private local instance, or the running cluster with deploy.address=auto), checks
that one engine replica fits on some machine, deploys the ingress and the engine replicas, and waits until they
run, at most deploy.start_timeout_s; every failure on the way is one UserError line. `run(job)` is what lora-serve
calls: start, serve until Ctrl-C / SIGTERM, stop.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from dataclasses import dataclass

from lora_train.errors import UserError, missing_extra
from lora_train.inference.cluster.board import board_actor
from lora_train.inference.registry import selected_base
from lora_train.schemas.infer import ServeJob

log = logging.getLogger(__name__)
APP = "lora-serve"  # the Ray Serve application's name
ENGINE, INGRESS = "engine", "ingress"  # its deployments; a replica's actor is SERVE_REPLICA::lora-serve#engine#<id>
NAMESPACE = "lora-serve"  # Ray namespace of the board actor


def _ray():
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise missing_extra("lora-serve deploy=ray", "cluster", e.name) from e
    return ray, serve


def _serve_gone() -> tuple[type[BaseException], ...]:
    """What serve.delete raises when there is nothing left to delete: no Serve instance on this Ray (never
    started, or shut down), or its controller actor died. Any other failure is real and propagates."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import RayServeException

    return RayServeException, RayActorError


def replicas_options(job: ServeJob) -> dict:
    """The engine deployment's options from deploy.* (checked: each bad key is named)."""
    d = job.deploy
    for key, value, low in [("deploy.max_replicas", d.max_replicas, 1),
                            ("deploy.max_ongoing_requests", d.max_ongoing_requests, 1),
                            ("deploy.num_cpus", d.num_cpus, 0), ("deploy.num_gpus", d.num_gpus, 0),
                            ("deploy.start_timeout_s", d.start_timeout_s, 1)]:
        if value < low:
            raise UserError(f"{key}={value} must be at least {low}")
    if d.max_adapters_per_replica is not None and d.max_adapters_per_replica < 1:
        raise UserError(f"deploy.max_adapters_per_replica={d.max_adapters_per_replica} must be at least 1")
    if d.memory_gb is not None and d.memory_gb <= 0:
        raise UserError(f"deploy.memory_gb={d.memory_gb} must be positive (or null: not declared)")
    actor = {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus}
    if d.memory_gb is not None:
        actor["memory"] = int(d.memory_gb * 2**30)
    options = {"name": ENGINE, "ray_actor_options": actor, "max_ongoing_requests": d.max_ongoing_requests,
               "health_check_period_s": 2, "graceful_shutdown_timeout_s": job.drain_timeout_s}
    if str(d.replicas) == "auto":
        options["autoscaling_config"] = {"min_replicas": 1, "max_replicas": d.max_replicas,
                                         "target_ongoing_requests": max(1, d.max_ongoing_requests // 2)}
    elif str(d.replicas).isdigit() and int(d.replicas) >= 1:
        options["num_replicas"] = int(d.replicas)
    else:
        raise UserError(f"deploy.replicas={d.replicas!r} must be a number of replicas (1 or more) or auto")
    return options


def connect(job: ServeJob) -> bool:
    """Connect to Ray as deploy.address says; True when this process started (and so owns) the instance."""
    ray, _ = _ray()
    if ray.is_initialized():  # the caller's own instance (a program or a test that called ray.init)
        return False
    address = job.deploy.address
    try:
        if address == "local":
            ray.init(include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
        else:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    except ConnectionError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"deploy.address={address}: no running Ray cluster to join ({first}); start one with "
                        "`ray start --head` or set RAY_ADDRESS, or use deploy.address=local") from None
    return True


def check_fits(ray, options: dict) -> None:
    """Refuse at once when no machine of the cluster could hold one engine replica."""
    need = {k: v for k, v in [("CPU", options["ray_actor_options"]["num_cpus"]),
                              ("GPU", options["ray_actor_options"]["num_gpus"]),
                              ("memory", options["ray_actor_options"].get("memory", 0))] if v}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(res.get(k, 0) >= v for k, v in need.items()) for res in nodes):
        return
    keys = {"CPU": "deploy.num_cpus", "GPU": "deploy.num_gpus", "memory": "deploy.memory_gb"}
    short = [k for k in need if all(res.get(k, 0) < need[k] for res in nodes)] or list(need)

    def shown(k, v):
        return f"{v / 2**30:.1f} GB" if k == "memory" else f"{v:g}"
    largest = ", ".join(f"{k} {shown(k, max((res.get(k, 0) for res in nodes), default=0))}" for k in short)
    raise UserError(f"no machine of the Ray cluster can hold one engine replica: "
                    + ", ".join(f"{keys[k]} asks {shown(k, need[k])}" for k in short)
                    + f", the largest machine offers {largest}; lower it or add machines")


@dataclass
class Running:
    """A started application: its URL, and stop()."""

    url: str
    owns_ray: bool
    board: object

    def stop(self) -> None:
        ray, serve = _ray()
        try:
            serve.delete(APP)
        except _serve_gone() as e:
            log.debug("serve.delete: %s", e)
        try:
            ray.kill(self.board)
        except ray.exceptions.ActorHandleNotFoundError as e:  # from an earlier Ray session: nothing to kill
            log.debug("board: %s", e)
        if self.owns_ray:
            serve.shutdown()
            ray.shutdown()


def start(job: ServeJob, api_key: str | None, create_app) -> Running:
    """Deploy lora-serve's routes (`create_app`: lora_train.inference.server.create_app) over engine replicas."""
    from lora_train.inference.cluster.engine import check_visible, engine_class
    from lora_train.inference.cluster.ingress import ingress_class

    ray, serve = _ray()
    options = replicas_options(job)
    check_visible(job)  # here first: the same check runs on every replica's machine
    model_cfg, _ = selected_base(job)
    owns = connect(job)
    deployed = False
    try:
        if job.deploy.address == "local" or not owns:
            check_fits(ray, options)
        serve.start(http_options={"host": job.host, "port": job.port})
        board_name = f"{APP}-board"
        board = board_actor(board_name, NAMESPACE)
        engine = serve.deployment(engine_class(job, board_name, NAMESPACE)).options(**options)
        ingress = serve.deployment(ingress_class()).options(
            name=INGRESS, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=max(1000, job.max_queue))
        app = ingress.bind(engine.bind(), job, api_key, model_cfg, board_name, NAMESPACE, create_app)
        deployed = True
        serve._run(app, name=APP, route_prefix="/", _blocking=False)  # public serve.run waits with no time limit
        wait_running(serve, job.deploy.start_timeout_s)
    except BaseException:
        if owns:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        elif deployed:  # the caller's Ray instance: take back only what this call deployed
            try:
                serve.delete(APP)
            except _serve_gone() as e:
                log.debug("serve.delete: %s", e)
        raise
    return Running(f"http://{job.host}:{job.port}", owns, board)


def wait_running(serve, timeout_s: float) -> None:
    """Until the application runs; a failed replica constructor or an unplaceable replica is one UserError line."""
    deadline = time.monotonic() + timeout_s
    message = ""
    while time.monotonic() < deadline:
        app = serve.status().applications.get(APP)
        if app is not None:
            state = str(getattr(app.status, "value", app.status))
            messages = [app.message] + [d.message for d in app.deployments.values()]
            message = next((m for m in messages if m), message)
            if state == "RUNNING":
                return
            if state in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise UserError(f"lora-serve deploy=ray did not start: {reason(message)}")
        time.sleep(0.5)
    raise UserError(f"the engine replicas did not start within deploy.start_timeout_s={timeout_s:g}"
                    + (f": {reason(message)}" if message else ""))


def reason(message: str) -> str:
    """The line of a Ray status message that says why (our own UserError when a replica raised one)."""
    m = re.search(r"UserError: (.+)", message)
    if m:
        return m.group(1).strip()
    lines = [x.strip() for x in message.strip().splitlines() if x.strip()]
    return lines[-1] if lines else "no reason given by Ray"


def run(job: ServeJob, api_key: str | None, create_app) -> None:
    """Serve until SIGINT / SIGTERM, then delete the application (and stop Ray when this process started it)."""
    running = start(job, api_key, create_app)
    print(f"serving on {running.url}/v1 with Ray Serve ({ENGINE} replicas: {job.deploy.replicas})", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        running.stop()
