"""Checkpoints: the manifest format and the stores that hold artifacts between stages."""

from bakeline.checkpoints.configmap import ConfigMapClient, ConfigMapData, ConfigMapStore
from bakeline.checkpoints.store import CheckpointRef, CheckpointStore, LocalStore

__all__ = [
    "CheckpointRef",
    "CheckpointStore",
    "ConfigMapClient",
    "ConfigMapData",
    "ConfigMapStore",
    "LocalStore",
]
