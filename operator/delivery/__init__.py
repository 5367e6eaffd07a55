"""Delivering a baked package where serving reads models: an S3-compatible bucket, an OCI
registry, or a local folder. One code path for both drivers: `bakeline run` calls it in its
own process after the bake, the operator in a delivery pod that alone holds the credentials
(the stages never do). Objects first, the package's manifest last, so a reader never takes a
half package for a whole one; a package already there (same sha256s) is not written again."""

from bakeline.api.output import Target, parse_target
from bakeline.delivery.deliver import Delivered, DeliveryError, DeliveryRefused, deliver

__all__ = ["Delivered", "DeliveryError", "DeliveryRefused", "Target", "deliver", "parse_target"]
