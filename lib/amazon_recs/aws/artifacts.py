"""The EMR artifacts of one version: built by ``make package``, uploaded by ``make deploy``.

A version is ``<package version>-<12 hex digits>``: setup.py's version and the
start of the SHA-256 over every shipped source file (``lib/amazon_recs/**.py``,
``setup.py``, ``constraints.txt``, ``jobs/*.py``, ``conf/*.yaml``,
``bootstrap/emr/*.sh``, by path and content). The same sources always give the
same version, and any change, committed or not, gives a new one; no git needed.

``dist/<version>/`` (uploaded as is to ``<emr.artifacts>/<version>/``)::

    amazon_recs-<package version>-py3-none-any.whl  the library (pyspark is EMR's)
    requirements-emr.txt  its runtime dependencies, the whole tree, pinned by constraints.txt
    jobs/*.py  conf/*.yaml  bootstrap/emr/*.sh
    SHA256SUMS            of every file above (the bootstrap action checks them)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from amazon_recs.aws.emr import CHECKSUMS_FILE, REQUIREMENTS_FILE, wheel_name
from amazon_recs.errors import RecsError

SHIPPED = (("jobs", "*.py"), ("conf", "*.yaml"), ("bootstrap/emr", "*.sh"))
LIBRARY = "lib/amazon_recs"
BUILD_FILES = ("setup.py", "constraints.txt")
# Installed beside the wheel without their Spark dependency (EMR provides Spark).
EXTRA_REQUIREMENTS = ("delta-spark",)
PROVIDED_BY_EMR = frozenset({"pyspark", "py4j"})
# Zip timestamps of the wheel: the same sources give the same bytes.
SOURCE_DATE_EPOCH = "315532800"


class PackagingError(RecsError):
    """The artifacts could not be built or uploaded."""


# --- the version -------------------------------------------------------------


def shipped_files(root: Path) -> list[str]:
    """The job, config and bootstrap files deployed beside the wheel (relative, sorted)."""
    return sorted(
        p.relative_to(root).as_posix() for folder, glob in SHIPPED for p in (root / folder).glob(glob)
    )


def source_files(root: Path) -> list[str]:
    """Every file whose content makes a version (relative, sorted)."""
    library = [p.relative_to(root).as_posix() for p in (root / LIBRARY).rglob("*.py")]
    return sorted({*library, *BUILD_FILES, *shipped_files(root)})


def source_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for name in source_files(root):
        data = (root / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def package_version(root: Path) -> str:
    """setup.py's ``version="..."``."""
    setup = root / "setup.py"
    if not setup.is_file():
        raise PackagingError(f"{setup} not found: run this from the project folder")
    match = re.search(r"""\bversion\s*=\s*["']([^"']+)["']""", setup.read_text(encoding="utf-8"))
    if not match:
        raise PackagingError(f'no version="..." in {setup}')
    return match.group(1)


def artifact_version(root: Path) -> str:
    """``<package version>-<12 hex digits of the sources' SHA-256>``."""
    return f"{package_version(root)}-{source_digest(root)[:12]}"


# --- building ----------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    version: str
    directory: Path
    files: list[str]


def package(root: Path, dist: Path) -> Package:
    """Build ``dist/<version>/`` from the sources under ``root`` (replacing an older build of it)."""
    version = artifact_version(root)
    target = dist / version
    with tempfile.TemporaryDirectory(prefix="amazon-recs-package-") as tmp:
        staging = Path(tmp) / version
        wheel = build_wheel(root, staging)
        if wheel.name != wheel_name(version):
            raise PackagingError(f"pip built {wheel.name}, expected {wheel_name(version)}")
        (staging / REQUIREMENTS_FILE).write_text(
            requirements(wheel, root / "constraints.txt", version), encoding="utf-8"
        )
        for name in shipped_files(root):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, staging / name)
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        (staging / CHECKSUMS_FILE).write_text(
            "".join(f"{sha256_file(staging / f)}  {f}\n" for f in files), encoding="utf-8"
        )
        if target.exists():
            shutil.rmtree(target)
        dist.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), target)
    return Package(version, target, [*files, CHECKSUMS_FILE])


def build_wheel(root: Path, out: Path) -> Path:
    """``pip wheel`` of a clean copy of setup.py and lib/ (no stale build/ folder can leak in)."""
    with tempfile.TemporaryDirectory(prefix="amazon-recs-wheel-") as tmp:
        source = Path(tmp) / "src"
        for name in source_files(root):
            if name.startswith(f"{LIBRARY}/") or name == "setup.py":
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / name, source / name)
        command = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(source),
        ]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
        )
        if result.returncode != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise PackagingError(f"pip wheel failed (it needs setuptools from PyPI the first time): {tail}")
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise PackagingError(f"pip wheel left {len(wheels)} wheels in {out}")
    return wheels[0]


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist lines."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(archive.read(metadata).decode("utf-8"))
    return headers.get_all("Requires-Dist") or []


def read_pins(constraints: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by canonical name."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in constraints.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def requirements(wheel: Path, constraints: Path, version: str) -> str:
    """The pinned dependency tree of the wheel (and of delta-spark's Python API), as a
    requirements file complete enough for ``pip install --no-deps``.

    The tree is walked through the metadata of the installed distributions (the
    project's virtualenv); every pin comes from ``constraints.txt``.

    Raises:
        PackagingError: a dependency has no pin, or its pin breaks a requirement.
    """
    pins = read_pins(constraints)
    tree = dependency_tree([*wheel_requirements(wheel), *EXTRA_REQUIREMENTS], pins)
    lines = [
        f"# amazon-recs {version}: every runtime dependency of {wheel.name}, pinned by constraints.txt.",
        "# bootstrap/emr/install.sh installs them with `pip install --no-deps`: the list is complete.",
        f"# Not here: {', '.join(sorted(PROVIDED_BY_EMR))} (EMR's own Spark).",
    ]
    return "\n".join([*lines, *(f"{name}=={pins[name]}" for name in sorted(tree))]) + "\n"


def dependency_tree(roots: Iterable[str], pins: dict[str, str]) -> set[str]:
    """Canonical names of ``roots`` and everything they need (markers evaluated here, extras off)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: set[str] = set()
    pending = [Requirement(r) for r in roots]
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if name in PROVIDED_BY_EMR or name in found:
            continue
        if name not in pins:
            raise PackagingError(f"dependency {req.name} has no pin in constraints.txt")
        if req.specifier and not req.specifier.contains(pins[name], prereleases=True):
            raise PackagingError(f"constraints.txt pins {name}=={pins[name]}, which breaks '{req}'")
        found.add(name)
        try:
            pending += [Requirement(r) for r in metadata.distribution(name).requires or []]
        except metadata.PackageNotFoundError:
            raise PackagingError(f"{name} is not installed in this environment: run `make setup`") from None
    return found


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- uploading ---------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    path: Path
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def plan_uploads(directory: Path, release_root: str) -> list[Upload]:
    """Every file of a built version, and the S3 object it becomes under ``release_root``."""
    bucket, _, prefix = release_root.removeprefix("s3://").partition("/")
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return [Upload(p, bucket, f"{prefix}/{p.relative_to(directory).as_posix()}") for p in files]


def deploy(s3, uploads: list[Upload], region: str, create_bucket: bool = False) -> list[tuple[Upload, str]]:
    """Upload each file unless the object already holds the same bytes (its ETag is the MD5).

    Returns:
        Each upload with ``"uploaded"`` or ``"unchanged"``.

    Raises:
        PackagingError: the bucket is missing (and ``create_bucket`` is off) or S3 refused.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    results = []
    try:
        for bucket in sorted({u.bucket for u in uploads}):
            ensure_bucket(s3, bucket, region, create_bucket)
        for upload in uploads:
            if _etag(s3, upload) == _md5(upload.path):
                results.append((upload, "unchanged"))
                continue
            s3.upload_file(str(upload.path), upload.bucket, upload.key)
            results.append((upload, "uploaded"))
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise PackagingError(f"S3 refused the upload: {error.get('Code')}: {error.get('Message')}") from None
    except BotoCoreError as exc:
        raise PackagingError(f"S3 upload failed: {exc}") from None
    return results


def ensure_bucket(s3, bucket: str, region: str, create: bool) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    if not create:
        raise PackagingError(
            f"bucket {bucket} does not exist: create it (aws s3 mb s3://{bucket} --region {region}) "
            "or pass --create-bucket"
        )
    location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **location)


def _etag(s3, upload: Upload) -> str | None:
    from botocore.exceptions import ClientError

    try:
        return s3.head_object(Bucket=upload.bucket, Key=upload.key)["ETag"].strip('"')
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
