"""Checkpoints: the manifest format and the stores that hold artifacts between stages."""
