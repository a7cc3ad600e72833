"""The board: one small Ray actor that every engine replica polls, so that admin actions reach all of them.

Ray Serve routes a request to one replica; it has no "tell every replica" call. Admin unload must evict an adapter
everywhere, and admin load must make every replica rescan adapters_dir. The ingress posts an action on the board
(a numbered list of actions); each replica polls it about three times a second, applies the actions it has not seen,
and reports what it applied along with its state (resident adapters, queue, loads). The ingress reads those reports
for /health, /metrics and /v1/models, so they answer the same whichever replica serves the next request.
"""

from __future__ import annotations

import time

POLL_S = 0.3  # how often a replica polls the board
STALE_S = 5.0  # a replica silent for this long is gone (killed, or scaled down)


class Board:
    def __init__(self):
        self.actions: list[tuple[int, str, str]] = []  # (number, action, adapter name)
        self.replicas: dict[str, dict] = {}  # replica id -> its last report, with "seen" and "at"
        self.evicted: set[int] = set()  # unload actions that found the adapter resident on some replica

    def post(self, action: str, name: str) -> int:
        self.actions.append((len(self.actions) + 1, action, name))
        return len(self.actions)

    def report(self, replica: str, seen: int, state: dict, evicted: list[int]) -> list[tuple[int, str, str]]:
        """A replica's state (and the unload actions that evicted something there); returns the actions it has not
        applied yet (it reports them seen next time)."""
        self.replicas[replica] = {**state, "seen": seen, "at": time.time()}
        self.evicted.update(evicted)
        return self.actions[seen:]

    def forget(self, replica: str) -> None:
        self.replicas.pop(replica, None)

    def snapshot(self) -> dict:
        """The live replicas' last reports and the number of the latest action."""
        now = time.time()
        live = {r: s for r, s in self.replicas.items() if now - s["at"] < STALE_S}
        return {"replicas": live, "latest": len(self.actions), "evicted": sorted(self.evicted)}


def board_actor(name: str, namespace: str):
    """The board as a Ray actor (no CPU reserved: it only keeps a list), created once per application."""
    import ray

    return ray.remote(num_cpus=0)(Board).options(name=name, namespace=namespace, get_if_exists=True).remote()
