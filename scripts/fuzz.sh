#!/usr/bin/env bash
# Bounded fuzzing of ELF's parsers (issue #15): builds every cargo-fuzz target under fuzz/ once,
# then runs each for a fixed time from its committed seed corpus (fuzz/corpus/<target>/) and its
# committed crashers (fuzz/regressions/<target>/, replayed first: a fixed bug must stay fixed).
#
# Usage: bash scripts/fuzz.sh [seconds-per-target] [target...]
#   seconds-per-target  default 20 ($FUZZ_SECONDS overrides the default)
#   target...           default: every target `cargo fuzz list` names
#
# Exits non-zero when any target panics, aborts, runs out of memory (-rss_limit_mb) or hangs on
# one input (-timeout); each failure's input is kept under fuzz/artifacts/<target>/ and the
# commands to reproduce and minimise it are printed. New inputs libFuzzer finds go to a scratch
# folder, never into the committed corpus; `cargo fuzz cmin` can fold good ones in by hand.
#
# Runs on stable Rust: with `--sanitizer none` cargo-fuzz passes no -Z flags (safe Rust;
# libFuzzer still catches panics, OOM and timeouts). Build output lives in fuzz/target.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

SECS="${1:-${FUZZ_SECONDS:-20}}"
shift || true
case "$SECS" in '' | *[!0-9]*)
  echo "usage: bash scripts/fuzz.sh [seconds-per-target] [target...]" >&2
  exit 2
  ;;
esac

CARGO_FUZZ_VERSION=0.13.1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# The same flags for build and run, or `cargo fuzz run` rebuilds everything.
FUZZ=(--fuzz-dir fuzz --target-dir fuzz/target --sanitizer none)
LIBFUZZER=(-max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1)

echo "== cargo fuzz build (cargo-fuzz $(cargo fuzz --version 2>/dev/null | awk '{print $NF}'))"
start=$(date +%s)
cargo fuzz build "${FUZZ[@]}"
echo "built in $(($(date +%s) - start)) s"

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The dataset targets write each input to a scratch file under $TMPDIR; keep it in $work.
mkdir -p "$work/tmp"
export TMPDIR="$work/tmp"

failed=()
for t in "${targets[@]}"; do
  echo "== fuzz $t (${SECS} s)"
  mkdir -p "$work/corpus-$t" "fuzz/artifacts/$t"
  dirs=("$work/corpus-$t")
  for d in "fuzz/regressions/$t" "fuzz/corpus/$t"; do
    if [ -d "$d" ]; then dirs+=("$d"); fi
  done
  # Not under fuzz/artifacts/<target>/: cargo-fuzz reports every file there as a failing input.
  mkdir -p fuzz/logs
  log="fuzz/logs/$t.log"
  marker="$work/start-$t"
  touch "$marker"
  rc=0
  # The outer timeout only guards against libFuzzer itself wedging.
  timeout "$((SECS + 300))" cargo fuzz run "${FUZZ[@]}" "$t" "${dirs[@]}" -- "${LIBFUZZER[@]}" \
    >"$log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" |
      tr '\n' ' ' || true
    echo
    continue
  fi
  failed+=("$t")
  echo "!! $t failed (exit $rc); from its log ($log):"
  # The panic message and stack (or libFuzzer's OOM/timeout report), not the input's bytes.
  if grep -qE 'panicked at|ERROR: libFuzzer' "$log"; then
    sed -n '/panicked at\|ERROR: libFuzzer\|ALARM: working on the last Unit/,/^SUMMARY: libFuzzer/p' "$log" |
      grep -v '^ *at /rustc/' | head -n 80 | sed 's/^/   | /'
  else
    tail -n 40 "$log" | sed 's/^/   | /'
  fi
  mapfile -t found < <(find "fuzz/artifacts/$t" -type f -newer "$marker" | sort)
  if [ "${#found[@]}" -eq 0 ]; then
    echo "!! no crash file was written (the outer timeout, or a build error?)"
  fi
  for f in "${found[@]}"; do
    # libFuzzer names an input by its SHA-1: a committed crasher that still fails says so.
    known=""
    if [ -d "fuzz/regressions/$t" ]; then
      known=$(find "fuzz/regressions/$t" -type f -exec sha1sum {} + |
        awk -v h="${f##*-}" '$1 == h { print $2; exit }')
    fi
    if [ -n "$known" ]; then
      echo "!! failing input: $f = $known (a committed crasher: the bug is not fixed yet)"
      echo "   reproduce: cargo fuzz run ${FUZZ[*]} $t $known"
      continue
    fi
    echo "!! failing input: $f"
    echo "   reproduce: cargo fuzz run ${FUZZ[*]} $t $f"
    echo "   minimise:  cargo fuzz tmin ${FUZZ[*]} $t $f"
    echo "   then commit the minimised input as fuzz/regressions/$t/<name> (replayed on every run)"
  done
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "== fuzzing found failures in: ${failed[*]}"
  exit 1
fi
echo "== fuzzing: ${#targets[@]} targets, ${SECS} s each, no failures"
