"""The one entry that sends a package where its output URI says (`deliver`; the URI's
meaning is the API's: `bakeline.api.output.parse_target`)."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from bakeline.api.output import Target
from bakeline.checkpoints.manifest import MANIFEST_NAME, FileEntry, read_manifest, sha256_file


class DeliveryError(Exception):
    """The delivery did not happen this time; trying again may work (the server away, a
    timeout, a 5xx)."""


class DeliveryRefused(DeliveryError):
    """The target refused it for a reason trying again will not change (wrong credentials,
    no such bucket or repository, no permission): the user's to fix."""


@dataclass(frozen=True)
class Delivered:
    """What a delivery left at its target."""

    uri: str
    digest: str  # sha256:... of the package's manifest (oci: of the OCI manifest)
    written: tuple[str, ...] = ()  # files sent this time
    present: tuple[str, ...] = field(default=())  # files already there with the same sha256


@dataclass(frozen=True)
class PackageFile:
    path: str  # relative, in the package
    local: Path
    sha256: str
    size_bytes: int
    role: str


def package_files(package: Path) -> list[PackageFile]:
    """The package's files as its manifest lists them, the manifest itself last, each
    checked against its sha256 here (a package that does not match is never sent)."""
    manifest = read_manifest(package)
    files = [_checked(package, entry) for entry in manifest.files]
    raw = (package / MANIFEST_NAME).read_bytes()
    files.append(
        PackageFile(
            MANIFEST_NAME,
            package / MANIFEST_NAME,
            hashlib.sha256(raw).hexdigest(),
            len(raw),
            "manifest",
        )
    )
    return files


def _checked(package: Path, entry: FileEntry) -> PackageFile:
    local = package / entry.path
    if not local.resolve().is_relative_to(package.resolve()):
        raise DeliveryRefused(f"{entry.path}: a manifest path may not leave the package")
    if sha256_file(local) != entry.sha256:
        raise DeliveryRefused(f"{entry.path} does not match its sha256 in the manifest")
    return PackageFile(entry.path, local, entry.sha256, entry.size_bytes, entry.role)


def deliver(
    package: Path,
    target: Target,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    insecure: bool = False,
    claim_mount: Path | None = None,
) -> Delivered:
    """Send the package (a checkpoint folder: manifest.json and its files) to `target`.
    Credentials come from where each client looks for them: the AWS variables or profile for
    S3, a Docker config (DOCKER_CONFIG, ~/.docker/config.json) for OCI registries."""
    files = package_files(package)
    if target.scheme == "file":
        return _to_folder(files, Path(target.location))
    if target.scheme == "pvc":
        if claim_mount is None:
            raise DeliveryRefused(f"{target.uri}: the claim is not mounted here (a cluster's)")
        return replace(_to_folder(files, claim_mount / target.path), uri=target.uri)
    if target.scheme == "s3":
        from bakeline.delivery import s3

        return s3.deliver(files, target, endpoint=endpoint, region=region, insecure=insecure)
    from bakeline.delivery import oci

    return oci.deliver(files, target, insecure=insecure)


def _to_folder(files: list[PackageFile], folder: Path) -> Delivered:
    """Copy into `folder`: each file through a temporary name, the manifest last."""
    written, present = [], []
    for item in files:
        target = folder / item.path
        if target.is_file() and sha256_file(target) == item.sha256:
            present.append(item.path)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(item.local, partial)
        partial.replace(target)
        written.append(item.path)
    digest = f"sha256:{files[-1].sha256}"
    return Delivered(folder.resolve().as_uri(), digest, tuple(written), tuple(present))
