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
    # a private Redis for the tests that run daphne against a Redis of their own
    redis-server
    chromium
    # the exported C header's checks: host gcc, the Cortex-M toolchain and QEMU (installed with
    # --no-install-recommends by ensure_debian_packages: 32 packages instead of 182)
    gcc
    make
    gcc-arm-none-eabi
    libnewlib-arm-none-eabi
    qemu-system-arm
)

ensure_venv requirements-dev.txt
ensure_debian_packages "${DEBIAN_PACKAGES[@]}"

export PATH="$PWD/$NASWEB_VENV/bin:$PATH"

# With PostgreSQL and Redis on this machine the suite runs on PostgreSQL and tests/integration
# runs a real worker; without them it runs on SQLite and those tests are skipped.
listening() {
    python -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)' \
        "$@" 2>/dev/null
}
if [ -z "${DATABASE_URL:-}" ] && listening 127.0.0.1 5432; then
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
fi
if [ -z "${REDIS_URL:-}" ] && listening 127.0.0.1 6379; then
    # Database 9, not the default 0 that a local nasweb's worker listens on.
    export REDIS_URL=redis://127.0.0.1:6379/9
fi
echo "database: ${DATABASE_URL:-SQLite}; Redis: ${REDIS_URL:-none (integration tests are skipped)}"

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
