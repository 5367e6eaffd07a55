"""Bakeline: a Kubernetes operator that bakes trained PyTorch models for deployment.

Layers (enforced by .importlinter): api -> engine / checkpoints -> runtime -> handlers -> cli.
"""

__version__ = "0.1.0"
