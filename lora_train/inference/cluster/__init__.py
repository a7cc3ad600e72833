"""`lora-serve deploy=ray`: the same server as a Ray Serve application over many machines (docs/scale.md).

- deploy.py: start Ray (or join a cluster), check the replicas can be placed, run the application, stop it.
- engine.py: the engine deployment: one base + the adapter registry + the continuous-batching engine per replica,
  the adapter being Ray Serve's multiplexed model id, so Ray's router sends an adapter to the replicas holding it.
- ingress.py: the HTTP ingress: lora-serve's own routes (server.create_app) over remote stand-ins of its engine.
- remote.py: those stand-ins: requests travel to the engine replicas through a deployment handle (with one retry
  when a replica dies), names and cards are read from the shared adapters_dir.
- board.py: a small actor through which admin load/unload reach every replica and replicas report their state.
"""
