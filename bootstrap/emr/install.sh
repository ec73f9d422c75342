#!/usr/bin/env bash
# EMR bootstrap action: install one deployed version of amazon-recs on this node.
#
#   install.sh --artifacts s3://<bucket>/artifacts/<version> --wheel <file.whl>
#              [--venv /opt/amazon-recs/venv] [--python python3.11]
#
# Into a virtualenv (Spark's Python: PYSPARK_PYTHON points at <venv>/bin/python)
# it installs the wheel and requirements-emr.txt (the whole dependency tree,
# pinned, so `pip install --no-deps` and nothing is resolved on the node), after
# checking both against the version's SHA256SUMS. Spark itself is EMR's.
#
# Idempotent: a node whose virtualenv already holds this wheel (same SHA-256)
# is left alone; an interrupted run is redone from scratch. Every action is
# logged to stdout/stderr, which EMR keeps under
# <LogUri>/<cluster id>/node/<instance id>/bootstrap-actions/<n>/.
#
# Environment (tests): AWS_CLI (default aws) copies from S3.
set -euo pipefail

ARTIFACTS=""
WHEEL=""
VENV=/opt/amazon-recs/venv
PYTHON=python3.11
AWS_CLI=${AWS_CLI:-aws}

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) amazon-recs bootstrap: $*"; }
die() {
  log "error: $*" >&2
  exit 1
}

while (($#)); do
  case $1 in
    --artifacts) ARTIFACTS=${2:?--artifacts needs a value}; shift 2 ;;
    --wheel) WHEEL=${2:?--wheel needs a value}; shift 2 ;;
    --venv) VENV=${2:?--venv needs a value}; shift 2 ;;
    --python) PYTHON=${2:?--python needs a value}; shift 2 ;;
    *) die "unknown argument '$1' (usage: install.sh --artifacts s3://... --wheel <file.whl> [--venv DIR] [--python python3.11])" ;;
  esac
done
[[ -n $ARTIFACTS && -n $WHEEL ]] || die "--artifacts and --wheel are required"
[[ $WHEEL == *.whl && $WHEEL != */* ]] || die "--wheel must be a wheel file name, got '$WHEEL'"
ARTIFACTS=${ARTIFACTS%/}
MARKER=$VENV/.amazon-recs-installed

# Root for /opt on EMR (the action runs as hadoop); nothing extra where the folder is ours.
parent=$(dirname "$VENV")
if [[ $(id -u) -eq 0 ]] || { mkdir -p "$parent" 2>/dev/null && [[ -w $parent ]]; }; then
  SUDO=()
else
  SUDO=(sudo)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

log "fetching $ARTIFACTS/{SHA256SUMS,$WHEEL,requirements-emr.txt}"
for name in SHA256SUMS "$WHEEL" requirements-emr.txt; do
  "$AWS_CLI" s3 cp --only-show-errors "$ARTIFACTS/$name" "$work/$name" || die "cannot copy $ARTIFACTS/$name"
done
(
  cd "$work"
  grep -E "  (${WHEEL//./\\.}|requirements-emr\.txt)\$" SHA256SUMS >expected.sums || true
  [[ $(wc -l <expected.sums) -eq 2 ]] || die "SHA256SUMS does not list $WHEEL and requirements-emr.txt"
  sha256sum --check --quiet expected.sums || die "checksum mismatch: the artifacts of $ARTIFACTS are damaged or mixed"
)
wanted=$(sha256sum "$work/$WHEEL" | cut -d' ' -f1)

if [[ -f $MARKER && $(cat "$MARKER") == "$wanted" ]]; then
  log "$WHEEL (sha256 $wanted) is already installed in $VENV: nothing to do"
  exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  log "installing $PYTHON and its pip with dnf"
  sudo dnf install -y -q "$PYTHON" "$PYTHON-pip" || die "dnf could not install $PYTHON"
fi
log "using $("$PYTHON" --version 2>&1) at $(command -v "$PYTHON")"

# A half-made virtualenv (no marker, or another version) is rebuilt from scratch.
if [[ -e $VENV ]]; then
  log "replacing the virtualenv at $VENV (it held $(cat "$MARKER" 2>/dev/null || echo 'an unfinished install'))"
  "${SUDO[@]}" rm -rf "$VENV"
fi
log "creating the virtualenv $VENV"
"${SUDO[@]}" "$PYTHON" -m venv "$VENV"
log "installing $(grep -cvE '^\s*(#|$)' "$work/requirements-emr.txt") pinned requirements"
"${SUDO[@]}" "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
  -r "$work/requirements-emr.txt" || die "pip could not install requirements-emr.txt (does the node reach PyPI?)"
log "installing $WHEEL"
"${SUDO[@]}" "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
  "$work/$WHEEL" || die "pip could not install $WHEEL"

# Every pinned distribution is there at its version, and the library imports.
"$VENV/bin/python" - "$work/requirements-emr.txt" <<'PY' || die "the virtualenv does not hold what requirements-emr.txt pins"
import sys
from importlib import metadata

for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if line:
        name, version = line.split("==")
        found = metadata.version(name)
        assert found == version, f"{name}: {found} installed, {version} pinned"
import amazon_recs

print(f"amazon_recs {amazon_recs.__version__} from {amazon_recs.__file__}")
PY
echo "$wanted" | "${SUDO[@]}" tee "$MARKER" >/dev/null
log "installed $WHEEL (sha256 $wanted) into $VENV"
