# Shared by scripts/start.sh and scripts/test.sh: source it from the repository root.
# shellcheck shell=bash

NASWEB_VENV=${NASWEB_VENV:-.venv}

say() {
    printf '\n==> %s\n' "$*"
}

# Create the virtual environment if it is missing and install a requirements file into it.  The
# install is skipped when the requirements (and the Python) are unchanged since the last one.
ensure_venv() {
    local requirements=$1
    local python=${PYTHON:-python3}
    if [ ! -x "$NASWEB_VENV/bin/python" ]; then
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
            echo "nasweb needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
            return 1
        }
        say "creating $NASWEB_VENV"
        "$python" -m venv "$NASWEB_VENV"
    fi
    local stamp="$NASWEB_VENV/.nasweb-$(basename "$requirements").sha256"
    local wanted
    wanted=$(cat "$requirements" requirements.txt "$NASWEB_VENV/pyvenv.cfg" | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        return 0
    fi
    say "installing $requirements into $NASWEB_VENV (first run takes a few minutes)"
    "$NASWEB_VENV/bin/python" -m pip install -qq --disable-pip-version-check -r "$requirements"
    echo "$wanted" >"$stamp"
}

# Install the Debian packages given as arguments that are not installed yet.
ensure_debian_packages() {
    local missing=() package
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$package")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0

    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "warning: not root and no sudo: install these Debian packages by hand: ${missing[*]}" >&2
            return 0
        fi
        sudo=(sudo)
    fi
    say "installing Debian packages: ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
