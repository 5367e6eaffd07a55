"""Build Bakeline's image from the Dockerfile with buildah, and print its reference last.

    hack/image [--oci-archive PATH] [--torch-index URL] [--env]

The reference is `localhost/bakeline:<hash>`, the hash of everything that goes into the image
(the Dockerfile, .dockerignore, the files the build context holds, the build arguments): the
same tree gives the same reference, and an unchanged tree is not built again.

The Dockerfile's base is the upstream `python:3.11.x-slim-bookworm`. Where that cannot be
pulled (no registry reachable), a base with the same layout is bootstrapped from Debian's own
packages with mmdebstrap (bookworm's Python 3.11, `/usr/local/bin/python` and `pip` linked as
the slim image has them), imported as `localhost/bakeline-base:<hash of its recipe>`, and
passed as `--build-arg PYTHON_IMAGE`.

buildah and podman use their own configuration under ~/.cache/bakeline/containers
(CONTAINERS_CONF, CONTAINERS_STORAGE_CONF; `--env` prints them), so nothing of the machine's
container setup is changed: storage there, runc with cgroupfs (crun refuses this machine's
hybrid cgroup v1 + v2 layout), rlimits no higher than this process's own (without
CAP_SYS_RESOURCE a container may not raise them). Other tools (the real-node tests) reuse
`image()` and `container_env()`, or `--oci-archive` to import the image elsewhere.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from controlplane import cache_dir

REPO = Path(__file__).resolve().parents[1]
REPOSITORY = "localhost/bakeline"
BASE_REPOSITORY = "localhost/bakeline-base"
# What a real user's build pulls; tried first, so a machine that can pull it uses it.
UPSTREAM_BASE = "docker.io/library/python:3.11.14-slim-bookworm"
# PyPI's torch for Linux is the CUDA build (the CPU index is not reachable here): ~4 GB more.
PYPI_INDEX = "https://pypi.org/simple"
# Where the host's CA bundle is mounted for pip during the build (a TLS-intercepting proxy's CA
# is only in the host's bundle); nothing of it stays in a layer.
BUILD_CA_PATH = "/run/bakeline-build/ca-certificates.crt"

# The bootstrapped base. Everything here is its recipe: change any of it and the base's hash,
# so its reference, changes.
BASE_SUITE = "bookworm"
BASE_MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "tzdata")
# As the slim image has them: its Python is /usr/local/bin/python, pip installs without
# Debian's externally-managed guard (the Dockerfile installs into a venv anyway).
BASE_CUSTOMIZE = (
    'ln -s /usr/bin/python3 "$1/usr/local/bin/python"',
    'ln -s /usr/bin/python3 "$1/usr/local/bin/python3"',
    'ln -s /usr/bin/pip3 "$1/usr/local/bin/pip"',
    'ln -s /usr/bin/pip3 "$1/usr/local/bin/pip3"',
    'rm -f "$1"/usr/lib/python3.*/EXTERNALLY-MANAGED',
    'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
)
BASE_CONFIG = (
    "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)


def log(message: str) -> None:
    print(f"hack/image: {message}", file=sys.stderr, flush=True)


def config_dir() -> Path:
    return cache_dir() / "containers"


def rlimits() -> tuple[int, int]:
    """Open files and processes for containers: podman's defaults (1048576, 4194304) exceed the
    hard limits here, and raising a hard limit needs CAP_SYS_RESOURCE. The runtime starts under
    conmon, which was measured to allow no more than 32768 processes here ("error setting
    rlimit type 6: operation not permitted" above that)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
    return (65536 if nofile == resource.RLIM_INFINITY else nofile), nproc


def container_env(parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for podman and buildah with Bakeline's own configuration, written
    first (the rlimits are this process's, which may differ from one session to the next)."""
    root = config_dir()
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    nofile, nproc = rlimits()
    storage = (
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{root / "storage"}"\n'
        f'runroot = "{root / "run"}"\n'
    )
    containers = (
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'  # no systemd here
        'events_logger = "file"\n'
        'runtime = "runc"\n'  # crun: "cgroups in hybrid mode not supported"
    )
    for name, text in (("storage.conf", storage), ("containers.conf", containers)):
        path = root / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    env = dict(os.environ if parent is None else parent)
    env["CONTAINERS_CONF"] = str(root / "containers.conf")
    env["CONTAINERS_STORAGE_CONF"] = str(root / "storage.conf")
    # buildah keeps RUN --mount=type=cache directories (pip's cache) under TMPDIR.
    env["TMPDIR"] = str(root / "tmp")
    return env


def ulimit_args() -> list[str]:
    """buildah's RUN steps take the same bounds as podman's containers (see container_env)."""
    nofile, nproc = rlimits()
    return [f"--ulimit=nofile={nofile}:{nofile}", f"--ulimit=nproc={nproc}:{nproc}"]


def image_exists(reference: str, env: Mapping[str, str]) -> bool:
    result = subprocess.run(
        ["podman", "image", "exists", reference], env=env, capture_output=True, check=False
    )
    return result.returncode == 0


def base_recipe_hash() -> str:
    recipe = {
        "suite": BASE_SUITE,
        "mirrors": BASE_MIRRORS,
        "packages": BASE_PACKAGES,
        "customize": BASE_CUSTOMIZE,
        "config": BASE_CONFIG,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def bootstrap_base(env: Mapping[str, str]) -> str:
    """A python:3.11-slim-bookworm look-alike from Debian's packages, imported once."""
    reference = f"{BASE_REPOSITORY}:{base_recipe_hash()}"
    if image_exists(reference, env):
        return reference
    for tool in ("mmdebstrap", "podman"):
        if not shutil.which(tool):
            raise SystemExit(f"hack/image: {tool} is missing; hack/install installs it")
    log(f"bootstrapping the base {reference} from Debian {BASE_SUITE} with mmdebstrap")
    with tempfile.TemporaryDirectory(dir=env["TMPDIR"]) as scratch:
        tarball = Path(scratch) / "base.tar"
        command = [
            "mmdebstrap",
            "--variant=minbase",
            "--quiet",
            "--aptopt=APT::Install-Recommends false",
            f"--include={','.join(BASE_PACKAGES)}",
            *(f"--customize-hook={hook}" for hook in BASE_CUSTOMIZE),
            BASE_SUITE,
            str(tarball),
            *BASE_MIRRORS,
        ]
        subprocess.run(command, check=True, env=env, stdout=sys.stderr)
        changes = [f"--change={line}" for line in BASE_CONFIG]
        subprocess.run(
            ["podman", "import", "--quiet", *changes, str(tarball), reference],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    return reference


def python_base(env: Mapping[str, str]) -> str:
    """The upstream slim base when it is here or can be pulled, else the bootstrapped one (once
    bootstrapped, no pull is tried again: a warm build needs no network)."""
    if image_exists(UPSTREAM_BASE, env):
        return UPSTREAM_BASE
    bootstrapped = f"{BASE_REPOSITORY}:{base_recipe_hash()}"
    if image_exists(bootstrapped, env):
        return bootstrapped
    pulled = subprocess.run(
        ["podman", "pull", "--quiet", UPSTREAM_BASE],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if pulled.returncode == 0:
        return UPSTREAM_BASE
    reason = (pulled.stderr.strip().splitlines() or ["no reason given"])[-1]
    log(f"cannot pull {UPSTREAM_BASE} ({reason[:200]}); using a bootstrapped base")
    return bootstrap_base(env)


def context_files() -> Iterator[Path]:
    """The build context as .dockerignore makes it: its `!` entries are what is let in (the
    file says so), its other patterns what is kept out below them."""
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    included = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    excluded = [line.removeprefix("**/") for line in lines if line not in ("*",) and line[0] != "!"]
    for root in sorted(included):
        path = REPO / root
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        for candidate in candidates:
            parts = candidate.relative_to(REPO).parts
            if candidate.is_file() and not any(
                fnmatch.fnmatchcase(part, pattern) for part in parts for pattern in excluded
            ):
                yield candidate


def image_hash(build_args: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for path in [REPO / "Dockerfile", REPO / ".dockerignore", *context_files()]:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(json.dumps(dict(build_args), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def host_ca_bundle() -> Path | None:
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("REQUESTS_CA_BUNDLE"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def build(
    torch_index: str = PYPI_INDEX, base: str | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Build (or find) the image and return its reference."""
    env = env if env is not None else container_env()
    for tool in ("buildah", "podman"):
        if not shutil.which(tool):
            raise SystemExit(f"hack/image: {tool} is missing; hack/install installs it")
    base = base or python_base(env)
    # What changes the image's content; PIP_CERT (where the CA is mounted) does not.
    build_args = {"PYTHON_IMAGE": base, "TORCH_INDEX_URL": torch_index}
    reference = f"{REPOSITORY}:{image_hash(build_args)}"
    if image_exists(reference, env):
        return reference
    make_room(env)
    command = [
        "buildah",
        "build",
        "--layers",  # each step cached: a change to agents/ does not download torch again
        "--network=host",  # pip reaches the package index as this machine does
        *ulimit_args(),
        *(f"--build-arg={key}={value}" for key, value in build_args.items()),
        f"--tag={reference}",
        f"--file={REPO / 'Dockerfile'}",
    ]
    if ca := host_ca_bundle():
        command += [f"--volume={ca}:{BUILD_CA_PATH}:ro", f"--build-arg=PIP_CERT={BUILD_CA_PATH}"]
    log(f"building {reference} (base {base}, torch from {torch_index})")
    started = time.monotonic()
    subprocess.run([*command, str(REPO)], check=True, env=env, stdout=sys.stderr)
    log(f"built {reference} in {time.monotonic() - started:.0f} s")
    return reference


# A build from nothing writes about 13 GB of layers (the builder's venv and the runtime stage's
# copy of it) and its OCI archive 3 GB more.
MIN_FREE_BYTES = 20 * 2**30


def make_room(env: Mapping[str, str], min_free: int = MIN_FREE_BYTES) -> None:
    """Where the storage's disk has less than `min_free` free, remove every image but the
    bootstrapped bases, the layer cache with them (the next build starts from a base). Each
    dependency change adds a venv of about 7 GB that no build uses again: without this the
    storage grows until a build fails mid-layer for want of space."""
    free = shutil.disk_usage(config_dir()).free
    if free >= min_free:
        return
    log(f"{free / 2**30:.1f} GiB free, under {min_free / 2**30:.0f}: removing old images")
    subprocess.run(["buildah", "rm", "--all"], env=env, capture_output=True, check=False)
    listed = subprocess.run(
        ["buildah", "images", "--all", "--noheading", "--format", "{{.ID}} {{.Name}}"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = [line.split() for line in listed.stdout.splitlines() if line.strip()]
    doomed = [row[0] for row in rows if row[1:] != [BASE_REPOSITORY]]
    for image_id in doomed:  # newest first: children before their parents
        subprocess.run(
            ["buildah", "rmi", "--force", image_id], env=env, capture_output=True, check=False
        )
    log(f"{shutil.disk_usage(config_dir()).free / 2**30:.1f} GiB free after removing them")


def export_oci_archive(reference: str, path: Path, env: Mapping[str, str]) -> None:
    """An OCI archive `ctr images import` and `podman load` take, named `reference`."""
    path.unlink(missing_ok=True)
    subprocess.run(
        ["podman", "save", "--quiet", "--format=oci-archive", f"--output={path}", reference],
        check=True,
        env=env,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/image", description=__doc__.split("\n")[0])
    parser.add_argument("--oci-archive", type=Path, help="also write the image to this file")
    parser.add_argument(
        "--torch-index",
        default=PYPI_INDEX,
        help="torch's wheel index (default PyPI: the CUDA build; "
        "https://download.pytorch.org/whl/cpu gives the small CPU one)",
    )
    parser.add_argument("--base", help="the Python base image (default: pull, else bootstrap)")
    parser.add_argument(
        "--env", action="store_true", help="print the CONTAINERS_* exports to use its storage"
    )
    args = parser.parse_args(argv)
    env = container_env()
    if args.env:
        for key in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF"):
            print(f"export {key}={env[key]}")
        return 0
    reference = build(args.torch_index, args.base, env)
    if args.oci_archive:
        export_oci_archive(reference, args.oci_archive, env)
        log(f"wrote {args.oci_archive}")
    print(reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
