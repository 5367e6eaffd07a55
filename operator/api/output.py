"""What an output URI means: where `spec.output` delivers a baked package. Parsed here, once,
for the API's validation and for the delivery that follows it (`bakeline.delivery`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

SCHEMES = ("s3", "oci", "pvc", "file")
# CEL's view of the same forms (the API server cannot call parse_target).
URI_CEL = (
    r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|oci://[^/]+/[a-z0-9].*"
    r"|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?|file:///.+|[^:]+)$"
)


@dataclass(frozen=True)
class Target:
    """A parsed output URI: s3://BUCKET/PREFIX, oci://HOST[:PORT]/REPOSITORY[:TAG],
    pvc://CLAIM/PATH (a folder on a PersistentVolumeClaim of the job's namespace; a cluster
    only), or file:///DIR (a local folder; `bakeline run` only)."""

    scheme: str
    location: str  # bucket, registry host, claim, or folder
    path: str  # key prefix, repository, folder inside the claim, or ""
    tag: str = ""  # oci only

    @property
    def uri(self) -> str:
        if self.scheme == "file":
            return Path(self.location).as_uri()
        tail = f"/{self.path}" if self.path else ""
        tag = f":{self.tag}" if self.tag else ""
        return f"{self.scheme}://{self.location}{tail}{tag}"


_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REPOSITORY = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def parse_target(uri: str, base: Path | None = None) -> Target:
    """The target `uri` names; ValueError saying what is wrong with it. A path without a
    scheme is a local folder, relative to `base` (the job file's folder) when given."""
    if "://" not in uri:
        folder = Path(uri)
        return Target(
            "file", str((base / folder) if base and not folder.is_absolute() else folder), ""
        )
    parts = urlsplit(uri)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"output {uri!r}: the scheme is one of s3://, oci://, pvc://, file://")
    if parts.query or parts.fragment:
        raise ValueError(f"output {uri!r}: no query or fragment")
    if parts.scheme == "file":
        if parts.netloc:
            raise ValueError(f"output {uri!r}: file:// URIs name a local path (file:///DIR)")
        return Target("file", parts.path, "")
    if parts.scheme == "s3":
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not _BUCKET.match(bucket):
            raise ValueError(f"output {uri!r}: {bucket!r} is not an S3 bucket name")
        if ".." in prefix.split("/"):
            raise ValueError(f"output {uri!r}: the key prefix has a '..' segment")
        return Target("s3", bucket, prefix)
    if parts.scheme == "pvc":
        claim, inside = parts.netloc, parts.path.strip("/")
        if not _CLAIM.match(claim) or len(claim) > 253:
            raise ValueError(f"output {uri!r}: {claim!r} is not a PersistentVolumeClaim name")
        if ".." in inside.split("/"):
            raise ValueError(f"output {uri!r}: the path has a '..' segment")
        return Target("pvc", claim, inside)
    host, rest = parts.netloc, parts.path.strip("/")
    repository, _, tag = rest.partition(":") if "@" not in rest else (rest, "", "")
    if not host or not repository or not _REPOSITORY.match(repository):
        raise ValueError(f"output {uri!r}: expected oci://REGISTRY/REPOSITORY[:TAG]")
    tag = tag or "latest"
    if not _TAG.match(tag):
        raise ValueError(f"output {uri!r}: {tag!r} is not a tag")
    return Target("oci", host, repository, tag)
