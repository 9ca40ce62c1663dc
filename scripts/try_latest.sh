#!/usr/bin/env bash
# Try the newest releases of every dependency: a scratch venv, sdlora's requirements at their newest versions
# (pyproject's upper bounds lifted), the test suite, and a report of what broke.
#
#   bash scripts/try_latest.sh [REPORT_DIR] [PYTEST_ARGS...]     (default: try-latest/, -m "not slow")
#
# REPORT_DIR gets freeze.txt (the versions tried), pytest.log, junit.xml and broken.txt (one failing test a
# line; empty when all passed). When broken.txt is empty, freeze.txt is a candidate for constraints.txt (less
# torch, which is installed on its own) and pyproject's bounds can move up to it. Needs the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
report=$(realpath -m "${1:-try-latest}"); shift || true
[ $# -gt 0 ] || set -- -m "not slow"
mkdir -p "$report"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
. "$scratch/venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 SDLORA_CACHE="$scratch/cache"
pip install -q --upgrade pip
# torch on its own, as the README installs it: TORCH_SPEC (default the CPU build that lies on disk here; a plain
# `torch` would take a multi-GB CUDA build).
pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q --no-deps -e .
# Every requirement of sdlora and of its test extra by name only: pip takes the newest release of each.
names=$(python - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = project["dependencies"] + [r for extra in project.get("optional-dependencies", {}).values() for r in extra]
names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in reqs}
print(" ".join(sorted(n for n in names if n not in ("torch", "sdlora"))))
PY
)
pip install -q --upgrade $names
pip freeze --exclude-editable > "$report/freeze.txt"
if [ -x .ci/browser-setup ]; then .ci/browser-setup >/dev/null; fi
set +e
SDLORA_SKIP_VERSION_CHECK=1 python -m pytest -q "$@" --junitxml="$report/junit.xml" 2>&1 | tee "$report/pytest.log"
set -e
python - "$report" <<'PY'
import sys, xml.etree.ElementTree as ET
report = sys.argv[1]
broken = [f"{c.get('classname')}::{c.get('name')}" for c in ET.parse(f"{report}/junit.xml").iter("testcase")
          if c.find("failure") is not None or c.find("error") is not None]
open(f"{report}/broken.txt", "w").write("".join(b + "\n" for b in broken))
print(f"{len(broken)} broken test(s) on the newest releases; versions in {report}/freeze.txt")
PY
