#!/usr/bin/env bash
# Print a JAVA_HOME for Java 17 (Spark 3.5 / EMR 7 parity), or explain and fail.
# Order: an existing JAVA_HOME that is Java 17, the `java` on PATH, then the
# usual install folders.
set -euo pipefail

major() { "$1/bin/java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1; }

candidates=()
[[ -n "${JAVA_HOME:-}" ]] && candidates+=("$JAVA_HOME")
if command -v java >/dev/null 2>&1; then
  candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")")
fi
candidates+=(/usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk-arm64 /usr/lib/jvm/temurin-17-jdk-amd64 /usr/lib/jvm/java-17)

for home in "${candidates[@]}"; do
  if [[ -x "$home/bin/java" && "$(major "$home")" == "17" ]]; then
    echo "$home"
    exit 0
  fi
done
echo "error: Java 17 not found (Spark 3.5 needs it). Install it, e.g. 'apt-get install openjdk-17-jdk-headless', or set JAVA_HOME." >&2
exit 1
