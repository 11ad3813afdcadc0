#!/usr/bin/env bash
# CI dependency gate (RELIABILITY A7): known vulnerabilities in what imagerec installs, plus the static rule.
#   .ci/audit.sh          audit the installed environment (.venv if present), fail on any known vulnerability
#   .ci/audit.sh --direct audit only imagerec's direct, security-relevant dependencies at their installed versions
# pip-audit needs a vulnerability service (the PyPI JSON API, or OSV). The script probes both (5 s each) and, when
# neither answers usefully (an offline or mirror-only machine), prints one "SKIPPED" line and does not fail
# on that account.
# AUDIT_SERVICE=pypi|osv skips the probe and makes the audit mandatory (it then fails if the service is unreachable).
# Exit codes: 0 clean (or the audit skipped, said so), 1 vulnerable or an unsafe call found in src/.
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
service=${AUDIT_SERVICE:-}
if [ -z "$service" ]; then
  service=$("$PY" - "${AUDIT_PYPI_URL:-https://pypi.org/pypi/pillow/9.0.0/json}" "${AUDIT_OSV_URL:-https://api.osv.dev/v1/query}" <<'PROBE'
# A service counts as reachable only if it reports the known vulnerabilities of a canary pin (pillow 9.0.0, e.g.
# CVE-2022-22817): the per-version JSON pip-audit reads, not just any 200 (a mirror may serve project pages only).
import json, sys, urllib.request
pypi, osv = sys.argv[1:3]
query = json.dumps({"package": {"name": "pillow", "ecosystem": "PyPI"}, "version": "9.0.0"}).encode()
for name, request, key in (
    ("pypi", urllib.request.Request(pypi), "vulnerabilities"),
    ("osv", urllib.request.Request(osv, data=query, headers={"Content-Type": "application/json"}), "vulns"),
):
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            if json.loads(reply.read()).get(key):
                print(name)
                break
            print(f"{name}: answered but reported no vulnerability for pillow 9.0.0", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        print(f"{name}: {type(exc).__name__}: {exc}"[:200], file=sys.stderr)
PROBE
  ) || service=""
  if [ -z "$service" ]; then
    echo "pip-audit SKIPPED: no vulnerability service reachable from this machine (PyPI's per-version JSON API" \
      "and api.osv.dev both failed the probe, see above); set AUDIT_SERVICE=pypi|osv to make the audit mandatory"
    exit 0
  fi
fi
echo "vulnerability service: $service"
if [ "${1:-}" = "--direct" ]; then
  req=$(mktemp)
  trap 'rm -f "$req"' EXIT
  for pkg in tensorflow keras pillow numpy h5py starlette fastapi python-multipart uvicorn opencv-python-headless onnx onnxruntime protobuf; do
    ver=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg" 2>/dev/null) || continue
    echo "$pkg==$ver" >>"$req"
  done
  "$PY" -m pip_audit -s "$service" --progress-spinner off --strict --no-deps --disable-pip -r "$req"
else
  "$PY" -m pip_audit -s "$service" --progress-spinner off --skip-editable
fi
