"""The `deploy` config group of `lora-serve` (conf/deploy/): where the server runs.

`deploy=local` (the default) is one process on this machine, as always. `deploy=ray` runs the same HTTP routes as
a Ray Serve application: one ingress and `replicas` engine replicas, each holding the base, the adapter registry and
the continuous-batching engine, with the adapter as Ray Serve's multiplexed model id (lora_train/inference/cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional


class DeployBackend(str, Enum):
    local = "local"  # one process, this machine (lora_train/inference/server.py)
    ray = "ray"  # a Ray Serve application over a Ray cluster (lora_train/inference/cluster)


@dataclass
class DeployConfig:
    backend: DeployBackend = DeployBackend.local
    # `local` starts a private Ray instance on this machine; `auto` joins the running cluster ($RAY_ADDRESS or the
    # one `ray start` left on this node); anything else is passed to ray.init as the address (ray://host:10001).
    address: str = "local"
    # Engine replicas: a number, or `auto` (Ray Serve autoscales between 1 and max_replicas on ongoing requests).
    # A string so that one key takes both; checked when the deployment starts.
    replicas: str = "1"
    max_replicas: int = 4  # replicas=auto: the upper bound
    # Adapters each replica keeps loaded (Ray Serve's max_num_models_per_replica); None = max_resident_adapters.
    max_adapters_per_replica: Optional[int] = None
    # Requests in flight per replica before Ray queues them elsewhere; the engine batches them, so well above
    # Serve's default of 5. replicas=auto scales on half of it.
    max_ongoing_requests: int = 64
    start_timeout_s: float = 300.0  # replicas not running by then: the reason is reported and lora-serve exits
    num_gpus: float = 0.0  # per replica; 1 on a GPU cluster (one replica per GPU)
    num_cpus: float = 1.0  # per replica; fractions let several replicas share a core (tests on 2 cores use 0.25)
    memory_gb: Optional[float] = None  # per replica, so Ray packs replicas by memory too (None = not declared)
