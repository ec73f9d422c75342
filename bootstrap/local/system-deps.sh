#!/usr/bin/env bash
# Install the Debian packages the local pipeline uses, when missing (idempotent).
#   libopenblas0-pthread: native BLAS for MLlib's ALS (otherwise it falls back to
#   a slower pure-JVM BLAS and says so in the log).
#   chromium, chromium-driver: headless Chromium and its WebDriver for the app's
#   browser test (tests/e2e).
set -euo pipefail

missing=()
ldconfig -p 2>/dev/null | grep -q 'libopenblas' || missing+=(libopenblas0-pthread)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

if ((${#missing[@]} == 0)); then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: please install ${missing[*]} (or your system's OpenBLAS and Chromium) with your package manager; continuing without them." >&2
  exit 0
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "note: not root and no sudo: install ${missing[*]} by hand; continuing without them." >&2
    exit 0
  fi
fi
echo "installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
