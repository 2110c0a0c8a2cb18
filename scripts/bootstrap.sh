# shellcheck shell=bash
# Sourced by scripts/test and scripts/olm: create .venv and install the project into it.
#
#   olm_venv [EXTRAS]     EXTRAS: "" for the runtime dependencies, "test" for the test extras
#
# Idempotent: the install is skipped while pyproject.toml is unchanged and the extras already
# installed cover what is asked. On Debian without the venv module, root installs
# python3-venv; anyone else gets the exact command to run.

OLM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OLM_VENV="$OLM_REPO/.venv"

olm_venv() {
    local extras=${1:-} stamp="$OLM_VENV/.olm-install-stamp" want have spec
    if [[ ! -x "$OLM_VENV/bin/python" ]]; then
        if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
            if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
                echo "==> installing python3-venv" >&2
                DEBIAN_FRONTEND=noninteractive apt-get update -qq
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            else
                echo "olm: python3 has no venv module; run: sudo apt-get install python3-venv" >&2
                return 1
            fi
        fi
        echo "==> creating $OLM_VENV" >&2
        python3 -m venv "$OLM_VENV"
    fi
    want=$(sha256sum "$OLM_REPO/pyproject.toml" | cut -d' ' -f1)
    have=$(cat "$stamp" 2>/dev/null || true)
    # The stamp is "<hash of pyproject.toml> <extras>"; "test" covers the runtime install too.
    if [[ "$have" == "$want $extras" || ( -z "$extras" && "$have" == "$want "* ) ]]; then
        return 0
    fi
    spec="$OLM_REPO"
    [[ -n "$extras" ]] && spec="$OLM_REPO[$extras]"
    echo "==> installing the project into $OLM_VENV${extras:+ (with $extras extras)}" >&2
    "$OLM_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
    printf '%s %s\n' "$want" "$extras" >"$stamp"
}
