"""What runs in a stage pod around the agent: `bakeline stage` (`wrapper.py`) and, on ConfigMap
lanes, the restore and store containers (`store.py`, over `protobuf.py`). Light on purpose: no
pydantic, no client or ML library (import-linter keeps it so)."""
