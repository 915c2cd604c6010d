#!/usr/bin/env bash
# Run every example (examples/*.py; the _*.py helpers excepted) one after the other.
# Offline on the embedded local backend by default; against the service when TINKER_API_KEY
# (and TINKER_BASE_URL) are set. Exits 1, naming them, if any example failed.
#   PYTHON=.venv/bin/python bash examples/run_all.sh
set -u
cd "$(dirname "$0")/.." || exit 2
py="${PYTHON:-python}"
failed=()
n=0
for script in examples/[!_]*.py; do
    n=$((n + 1))
    echo "=== ${script}"
    start=$(date +%s)
    if "$py" "$script"; then
        echo "--- ok: ${script} ($(( $(date +%s) - start )) s)"
    else
        echo "--- FAILED: ${script} (exit $?)"
        failed+=("$script")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "${#failed[@]} of ${n} examples failed: ${failed[*]}"
    exit 1
fi
echo "all ${n} examples passed"
