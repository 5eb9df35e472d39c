"""Offline manifest checks: renders every kustomize target under deploy/k8s and validates it
(deploy/check/README.md). Prints one FAIL line per violation; exits 1 if there is any."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from elfcheck import builtin, kubectl, runner  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--k8s", type=Path, default=HERE.parent / "k8s", help="the tree to check (default deploy/k8s)")
    ap.add_argument("--versions", default=",".join(runner.default_versions()),
                    help="Kubernetes versions for the built-in schemas, comma separated")
    ap.add_argument("--target", action="append", help="only this target (e.g. overlays/gpu); repeatable")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only failures and the result")
    a = ap.parse_args()
    start = time.monotonic()
    kc = kubectl.ensure_kubectl()
    ctx = runner.Context(kc, HERE / "schemas", a.versions.split(","))
    targets = runner.run(ctx, a.k8s, a.target)
    fails = runner.failures(targets)
    for f in fails:
        print(f.line())
    if not a.quiet:
        print(f"kubectl: {kubectl.client_version(kc)}; kubernetes-validate {builtin.PACKAGE_VERSION}, "
              f"Kubernetes {', '.join(ctx.versions)} (strict)")
        for t in targets:
            kinds = sorted({d.kind for d in t.docs})
            state = "FAIL" if t.failures else "ok"
            print(f"{state} {t.name}: {len(t.docs)} objects ({', '.join(kinds)}), {len(t.failures)} failures")
        for line in ctx.cel.stats.summary():
            print(line)
    print(f"{'FAILED' if fails else 'passed'}: {len(targets)} targets, {len(fails)} failures, "
          f"{time.monotonic() - start:.1f} s")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
