# shellcheck shell=bash
# Sourced by the other scripts: finds a Python >= 3.12, makes .venv in the repository root,
# installs the project into it (editable, with the dev extra) when pyproject.toml has changed
# since the last install, puts .venv/bin first on PATH and cds to the repository root.
# Quiet on success. Usage from a script: source "$(dirname "$0")/_bootstrap.sh" || exit 1

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT

# True if "$1" runs and is a Python >= 3.12. Running it (not just `command -v`) matters: a pyenv
# shim for a version that is not selected exists on PATH but fails.
_bootstrap_python_ok() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1
}

# Prints the path of the first acceptable interpreter: $PYTHON, then python3.13, python3.12 and
# python3 on PATH, then pyenv's versions, newest first.
_bootstrap_find_python() {
    local candidate root
    if [ -n "${PYTHON:-}" ]; then
        if _bootstrap_python_ok "$PYTHON"; then
            echo "$PYTHON"
            return 0
        fi
        echo "bootstrap: PYTHON=$PYTHON is not a working Python >= 3.12; looking further" >&2
    fi
    for candidate in python3.13 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && _bootstrap_python_ok "$candidate"; then
            # The real path, not a shim's: the venv must not depend on pyenv's selection.
            "$candidate" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1 && root="$(pyenv root 2>/dev/null)" \
        && [ -d "$root/versions" ]; then
        # Version names like 3.13.0, 3.12.1, pypy3.10-7.3: sort numerically field by field,
        # newest first (sort -V is not in every sort).
        while IFS= read -r candidate; do
            candidate="$root/versions/$candidate/bin/python3"
            if [ -x "$candidate" ] && _bootstrap_python_ok "$candidate"; then
                echo "$candidate"
                return 0
            fi
        done < <(cd "$root/versions" && printf "%s\n" * | sort -t. -k1,1nr -k2,2nr -k3,3nr)
    fi
    echo "bootstrap: no Python >= 3.12 found (tried \$PYTHON, python3.13, python3.12, python3" \
        "and pyenv's versions). Install one, or set PYTHON=/path/to/python3.12." >&2
    return 1
}

_bootstrap() {
    local venv="$REPO_ROOT/.venv" python stamp hash
    if ! _bootstrap_python_ok "$venv/bin/python"; then
        python="$(_bootstrap_find_python)" || return 1
        # --clear: an old .venv (wrong Python, broken links) is replaced, not patched.
        "$python" -m venv --clear "$venv" || {
            echo "bootstrap: could not create $venv with $python" >&2
            return 1
        }
    fi
    stamp="$venv/.pyproject.sha256"
    hash="$("$venv/bin/python" -c 'import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$REPO_ROOT/pyproject.toml")" \
        || return 1
    if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]; then
        # -q keeps a good install silent; pip still prints errors.
        (cd "$REPO_ROOT" && "$venv/bin/python" -m pip install -q --disable-pip-version-check \
            -e ".[dev]") || {
            echo "bootstrap: pip install -e \".[dev]\" failed (see above)" >&2
            return 1
        }
        echo "$hash" >"$stamp"
    fi
    export VIRTUAL_ENV="$venv"
    export PATH="$venv/bin:$PATH"
    unset PYTHONHOME
    cd "$REPO_ROOT" || return 1
}

_bootstrap || return 1
