#!/usr/bin/env bash
# The one command that installs everything the checks need and runs them all:
#   scripts/test.sh [extra pytest arguments]
# Lint, import contracts, type checks and the test suite all run; the exit status is non-zero if
# any of them failed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# Debian packages the tests use (real data sets, services, toolchains, browsers).
DEBIAN_PACKAGES=(
    dataset-fashion-mnist
)

ensure_venv requirements-dev.txt
ensure_debian_packages "${DEBIAN_PACKAGES[@]}"

export PATH="$PWD/$NASWEB_VENV/bin:$PATH"
failed=()

run_check() {
    local name=$1
    shift
    say "$name"
    if ! "$@"; then
        failed+=("$name")
    fi
}

run_check "ruff check" ruff check .
run_check "lint-imports" lint-imports --no-logo
run_check "mypy searches/engine" mypy searches/engine
run_check "pytest" pytest "$@"

if [ ${#failed[@]} -ne 0 ]; then
    printf '\nFAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '\nAll checks passed.\n'
