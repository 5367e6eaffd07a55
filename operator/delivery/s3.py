"""A package into an S3-compatible bucket with boto3: each file an object under the prefix,
its sha256 in the object's metadata, the package's manifest.json last; an object already there
with the same sha256 is not sent again. Large files go up in parts."""

from __future__ import annotations

from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from bakeline.api.output import Target
from bakeline.delivery.deliver import Delivered, DeliveryError, DeliveryRefused, PackageFile

PART_BYTES = 8 << 20
# Error codes that no retry changes: the user's credentials, bucket or permissions.
_REFUSALS = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "AllAccessDisabled",
        "AccountProblem",
        "403",
    }
)
_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"})
_MEDIA = {"manifest": "application/json", "report": "application/json"}


def deliver(
    files: list[PackageFile],
    target: Target,
    *,
    endpoint: str | None,
    region: str | None,
    insecure: bool,
) -> Delivered:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or "us-east-1",
        verify=not insecure,
        config=Config(
            retries={"max_attempts": 4, "mode": "standard"},
            s3={"addressing_style": "path"} if endpoint else {},
            connect_timeout=10,
            read_timeout=60,
        ),
    )
    transfer = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES)
    written, present = [], []
    try:
        for item in files:
            key = "/".join(p for p in (target.path, item.path) if p)
            if _stored_sha256(client, target.location, key) == item.sha256:
                present.append(item.path)
                continue
            client.upload_file(
                str(item.local),
                target.location,
                key,
                ExtraArgs={
                    "Metadata": {"sha256": item.sha256, "role": item.role},
                    "ContentType": _MEDIA.get(item.role, "application/octet-stream"),
                },
                Config=transfer,
            )
            written.append(item.path)
    except NoCredentialsError as exc:
        raise DeliveryRefused(
            f"{target.uri}: no S3 credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        ) from exc
    except ClientError as exc:
        raise _classified(exc, target) from exc
    except S3UploadFailedError as exc:  # upload_file's wrapping of a ClientError
        cause = exc.__context__
        if isinstance(cause, ClientError):
            raise _classified(cause, target) from exc
        refused = any(code in str(exc) for code in _REFUSALS)
        raise (DeliveryRefused if refused else DeliveryError)(f"{target.uri}: {exc}") from exc
    except BotoCoreError as exc:  # connection refused or reset, timeouts
        raise DeliveryError(f"{target.uri}: {exc}") from exc
    return Delivered(target.uri, f"sha256:{files[-1].sha256}", tuple(written), tuple(present))


def _stored_sha256(client: Any, bucket: str, key: str) -> str | None:
    """The sha256 an object already at `key` was delivered with; None when there is none."""
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return str((head.get("Metadata") or {}).get("sha256") or "") or None


def _classified(exc: ClientError, target: Target) -> DeliveryError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    message = f"{target.uri}: {code or status}: {error.get('Message') or exc}"
    if status in (401, 403) or code in _CREDENTIALS:
        return DeliveryRefused(f"{target.uri}: the credentials were refused ({code or status})")
    if code in _REFUSALS or status in (400, 404):
        return DeliveryRefused(message)
    return DeliveryError(message)
