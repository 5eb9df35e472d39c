#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests (deploy/check/README.md): renders every kustomize
# target under deploy/k8s with kubectl, validates built-in kinds strictly at the oldest and
# newest supported Kubernetes, custom resources against their published schemas made strict
# with their CEL rules, the JobSets' Job templates as batch/v1 Jobs, and the cross-field rules
# only an API server (or the run itself) would catch. One FAIL line per violation; exit 1 on any.
# Arguments go to check.py (e.g. --target overlays/gpu, --versions 1.31,1.34,1.37).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec python3 "$CHECK_DIR/check.py" "$@"
