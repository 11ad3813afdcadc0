#!/usr/bin/env bash
# CI fuzz step (RELIABILITY B15): a short Atheris run of the shared decode function, load_image on raw bytes.
#   .ci/fuzz.sh [SECONDS]   default 60 (or $FUZZ_SECONDS); fails on any crash, leak or hang the harness reports
# A crashing input is kept under $FUZZ_ARTIFACTS (default: a new temporary folder; the log also prints it in
# Base64). Reproduce it with: .venv/bin/python tests/security/fuzz_decode.py CRASH_FILE
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
seconds=${1:-${FUZZ_SECONDS:-60}}
artifacts=${FUZZ_ARTIFACTS:-$(mktemp -d -t imagerec-fuzz-artifacts-XXXXXX)}
corpus=$(mktemp -d -t imagerec-fuzz-corpus-XXXXXX)
trap 'rm -rf "$corpus"; rmdir "$artifacts" 2>/dev/null || true' EXIT  # keeps the folder if it holds a crash
mkdir -p "$artifacts"
echo "== atheris: load_image for ${seconds}s (crash inputs go to $artifacts/)"
set +e
"$PY" tests/security/fuzz_decode.py -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 \
  -artifact_prefix="$artifacts/" "$corpus" 2>&1 | grep -E -v '^(INFO: Instrumenting|#[0-9]+)'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "fuzz: load_image failed (exit $status); reproduce with: $PY tests/security/fuzz_decode.py $artifacts/<crash file>" >&2
  exit 1
fi
echo "fuzz: clean"
