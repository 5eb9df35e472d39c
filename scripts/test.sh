#!/usr/bin/env bash
# Runs the whole test suite from a fresh machine: installs what the tests call (promtool from
# Debian's prometheus package, Debian's chromium for the status-page test, the Python fixture
# writers from PyPI), checks the deploy/ manifests offline (deploy/check), fuzzes the parsers
# for a bounded time (scripts/fuzz.sh), then `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus chromium >/dev/null
fi
python3 -m pip install -q -r scripts/requirements-test.txt
# The Kubernetes manifests under deploy/ (offline: kubectl kustomize, strict schemas, CEL, the
# rules only an API server checks), then the planted-error self-test of those checks. Two
# lines, not `a && b`: under `set -e` a failure on the left of && would not stop the script.
bash deploy/check/check.sh
bash deploy/check/selftest.sh
# Every parser of untrusted bytes under libFuzzer for a bounded time (fuzz/README.md): the
# committed crashers first, then the seed corpora; any panic, OOM or hang fails the suite.
bash scripts/fuzz.sh 15
cargo test --release --workspace
