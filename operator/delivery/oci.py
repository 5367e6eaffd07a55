"""A package into an OCI registry as an artifact: one layer per file (its path in the
`org.opencontainers.image.title` annotation, a media type per role), the empty config, and
the manifest pushed last by digest and then tagged, so a tag never names a half-pushed
package. Blobs the registry already has are not sent again; a tag already naming the same
manifest is left alone. Plain OCI distribution API calls over requests, with the registry's
Basic or Bearer token auth and credentials from a Docker config."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import requests

from bakeline.api.output import Target
from bakeline.delivery.deliver import Delivered, DeliveryError, DeliveryRefused, PackageFile

ARTIFACT_TYPE = "application/vnd.bakeline.package.v1"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"  # {}
EMPTY_CONFIG = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_DIGEST, "size": 2}
TITLE = "org.opencontainers.image.title"
# A media type per role of the checkpoint manifest's files.
MEDIA_TYPES = {
    "model": "application/vnd.bakeline.model.v1",
    "runtime-config": "application/vnd.bakeline.runtime-config.v1+json",
    "tokenizer": "application/vnd.bakeline.tokenizer.v1",
    "preprocessor": "application/vnd.bakeline.preprocessor.v1+json",
    "report": "application/vnd.bakeline.report.v1+json",
    "readme": "text/markdown",
    "loader": "text/x-python",
    "manifest": "application/vnd.bakeline.manifest.v1+json",
}
DEFAULT_MEDIA = "application/vnd.bakeline.file.v1"
TIMEOUT = (10, 300)


def media_type(role: str) -> str:
    return MEDIA_TYPES.get(role, DEFAULT_MEDIA)


def deliver(files: list[PackageFile], target: Target, *, insecure: bool) -> Delivered:
    registry = _Registry(target, insecure)
    try:
        written, present = [], []
        registry.ensure_blob(b"{}", EMPTY_DIGEST)
        layers = []
        for item in files:
            digest = f"sha256:{item.sha256}"
            if registry.has_blob(digest):
                present.append(item.path)
            else:
                registry.upload_blob(item.local, digest)
                written.append(item.path)
            layers.append(
                {
                    "mediaType": media_type(item.role),
                    "digest": digest,
                    "size": item.size_bytes,
                    "annotations": {TITLE: item.path},
                }
            )
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA,
            "artifactType": ARTIFACT_TYPE,
            "config": EMPTY_CONFIG,
            "layers": layers,
            "annotations": {"io.bakeline.package.manifest": f"sha256:{files[-1].sha256}"},
        }
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if registry.manifest_digest(target.tag) != digest:
            registry.put_manifest(digest, body)  # by digest first: nothing names it yet
            registry.put_manifest(target.tag, body)
    except requests.ConnectionError as exc:
        raise DeliveryError(f"{target.uri}: the registry is not reachable: {exc}") from exc
    except requests.Timeout as exc:
        raise DeliveryError(f"{target.uri}: the registry timed out: {exc}") from exc
    return Delivered(target.uri, digest, tuple(written), tuple(present))


class _Registry:
    """The distribution API of one repository, authenticated as the registry asks."""

    def __init__(self, target: Target, insecure: bool) -> None:
        self.target = target
        scheme = "http" if insecure else "https"
        self.base = f"{scheme}://{target.location}/v2/{target.path}"
        self.session = requests.Session()
        self.credentials = docker_credentials(target.location)
        self.token: str | None = None
        self._basic = False  # the registry asked for Basic auth: send it on every call

    # ---- calls
    def has_blob(self, digest: str) -> bool:
        return self._call("HEAD", f"/blobs/{digest}", ok=(200, 404)).status_code == 200

    def ensure_blob(self, data: bytes, digest: str) -> None:
        if not self.has_blob(digest):
            self._upload(data, digest)

    def upload_blob(self, path: Path, digest: str) -> None:
        with path.open("rb") as handle:
            self._upload(handle, digest)

    def manifest_digest(self, reference: str) -> str | None:
        response = self._call(
            "HEAD",
            f"/manifests/{reference}",
            ok=(200, 404),
            headers={"Accept": MANIFEST_MEDIA},
        )
        return (
            response.headers.get("Docker-Content-Digest") if response.status_code == 200 else None
        )

    def put_manifest(self, reference: str, body: bytes) -> None:
        self._call(
            "PUT",
            f"/manifests/{reference}",
            ok=(201,),
            data=body,
            headers={"Content-Type": MANIFEST_MEDIA},
        )

    def _upload(self, data: Any, digest: str) -> None:
        started = self._call("POST", "/blobs/uploads/", ok=(202,))
        location = started.headers["Location"]
        if location.startswith("/"):
            location = self.base.split("/v2/")[0] + location
        separator = "&" if "?" in location else "?"
        self._call(
            "PUT",
            f"{location}{separator}digest={digest}",
            ok=(201,),
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            absolute=True,
        )

    def _call(
        self,
        method: str,
        path: str,
        ok: tuple[int, ...],
        absolute: bool = False,
        **kwargs: Any,
    ) -> requests.Response:
        url = path if absolute else self.base + path
        for _ in range(2):  # once, and again after answering an auth challenge
            headers = dict(kwargs.pop("headers", {}) or {})
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            elif self.credentials and self._basic:
                headers["Authorization"] = "Basic " + _basic(*self.credentials)
            body = kwargs.get("data")
            if body is not None and hasattr(body, "seek"):
                body.seek(0)  # a file sent again after an auth challenge
            response = self.session.request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)
            kwargs["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
            if response.status_code != 401 or not self._answer(response):
                break
        if response.status_code in ok:
            return response
        detail = _error_text(response)
        message = (
            f"{self.target.uri}: {method} {path.split('?')[0]}: {response.status_code} {detail}"
        )
        if response.status_code in (400, 401, 403, 404, 405):
            raise DeliveryRefused(message)
        raise DeliveryError(message)

    def _answer(self, response: requests.Response) -> bool:
        """Meet a 401's challenge once; False when there is nothing more to try."""
        challenge = response.headers.get("WWW-Authenticate", "")
        kind = challenge.split(" ", 1)[0].lower()
        if self.token or self._basic or (self.credentials is None and kind == "basic"):
            return False
        if kind == "basic":
            self._basic = True
            return True
        if kind != "bearer":
            return False
        fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        params = {k: v for k, v in fields.items() if k in ("service", "scope")}
        params.setdefault("scope", f"repository:{self.target.path}:pull,push")
        realm = fields.get("realm", "")
        answer = self.session.get(realm, params=params, auth=self.credentials, timeout=TIMEOUT)
        if answer.status_code != 200:
            return False
        grant = answer.json()
        self.token = grant.get("token") or grant.get("access_token")
        return bool(self.token)


def docker_credentials(registry: str) -> tuple[str, str] | None:
    """The user and password a Docker config holds for `registry` (DOCKER_CONFIG's
    config.json, else ~/.docker/config.json; a kubernetes.io/dockerconfigjson Secret mounted
    as that file); None when it holds none."""
    folder = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for name, entry in (config.get("auths") or {}).items():
        host = re.sub(r"^https?://", "", name).split("/")[0]
        if host != registry:
            continue
        if entry.get("username") is not None:
            return str(entry["username"]), str(entry.get("password") or "")
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, password
    return None


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _error_text(response: requests.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or response.reason
    except ValueError:
        return str(response.reason)
