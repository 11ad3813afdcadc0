#!/usr/bin/env bash
# CI dependency gate (RELIABILITY A7): known vulnerabilities in what imagerec installs, plus the static rule.
#   .ci/audit.sh          audit the installed environment (.venv if present), fail on any known vulnerability
#   .ci/audit.sh --direct audit only imagerec's direct, security-relevant dependencies at their installed versions
# Exit codes: 0 clean, 1 vulnerable or an unsafe call found in src/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

echo "== static rule: no unsafe deserialisation, eval or exec in src/"
if grep -rnE 'pickle\.loads?\(|marshal\.loads?\(|joblib\.load\(|allow_pickle\s*=\s*True|safe_mode\s*=\s*False|enable_unsafe_deserialization\(\)|yaml\.(unsafe_)?load\(' src/; then
  echo "unsafe deserialisation call found in src/ (see above)" >&2
  exit 1
fi
# eval/exec called as builtins in Python (not methods such as model.eval()): the rule of tests/security A7
if grep -rnE --include='*.py' '(^|[^[:alnum:]_.])(eval|exec)\(' src/; then
  echo "eval/exec call found in src/ (see above)" >&2
  exit 1
fi

echo "== pip-audit"
if [ "${1:-}" = "--direct" ]; then
  req=$(mktemp)
  trap 'rm -f "$req"' EXIT
  for pkg in tensorflow keras pillow numpy h5py starlette fastapi python-multipart uvicorn opencv-python-headless onnx onnxruntime protobuf; do
    ver=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg" 2>/dev/null) || continue
    echo "$pkg==$ver" >>"$req"
  done
  "$PY" -m pip_audit --progress-spinner off --strict --no-deps --disable-pip -r "$req"
else
  "$PY" -m pip_audit --progress-spinner off --skip-editable
fi
