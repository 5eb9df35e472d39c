#!/usr/bin/env bash
# Planted-error self-test of the manifest checks: the unmodified tree must pass, and for every
# kind of check a copy of deploy/k8s with one planted error must fail with the expected
# message (deploy/check/selftest.py lists the plants).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec python3 "$CHECK_DIR/selftest.py" "$@"
