#!/usr/bin/env bash
# Set-up and entry points for stream-fabric on a fresh Debian machine.
#
#   bash dev.sh demo     install what is missing, build, run the demo
#   bash dev.sh test     install what is missing, build, run every quick test
#   bash dev.sh fuzz [SECONDS]   long libFuzzer runs of every C decoder
#   bash dev.sh bench    run the benchmarks in bench/
#
# System packages come from apt (only when missing, and it says so); Python
# packages go into .venv, with the package installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV=${FABRIC_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
    # $@: Debian packages to install when missing.
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

system_deps() {
    apt_install pkg-config libssl-dev libmsgpack-dev make gcc
}

fuzz_deps() {
    # clang with its libFuzzer and sanitizer runtimes, for the fuzz targets.
    command -v clang >/dev/null 2>&1 || apt_install clang
    local v
    v=$(clang -dumpversion | cut -d. -f1)
    apt_install "libclang-rt-$v-dev"
}

python_env() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtual environment $VENV"
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.fabric-installed"
    local want
    want=$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        say "installing stream-fabric (editable) with its test extras"
        "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
        "$VENV/bin/python" -m pip install -q -e ".[test,bench]"
        echo "$want" > "$stamp"
    else
        # Rebuild the extension in place when a C source or header changed.
        "$VENV/bin/python" setup.py -q build_ext --inplace >/dev/null
    fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
    demo)
        system_deps
        python_env
        exec "$VENV/bin/python" -m fabric demo "$@"
        ;;
    test)
        system_deps
        fuzz_deps
        python_env
        say "C core tests under ASan + UBSan"
        make -s -C csrc test
        if ls csrc/fuzz/fuzz_*.c >/dev/null 2>&1; then
            say "fuzz smoke runs (${FUZZ_SECONDS:-60}s per target)"
            make -s -C csrc fuzz-smoke FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
        fi
        say "stubtest: fabric/_core.pyi against the built extension"
        # With pyproject's [tool.mypy], so the package's modules it reads are
        # checked as `mypy fabric` checks them (no annotation-unchecked notes).
        "$VENV/bin/python" -m mypy.stubtest fabric._core --mypy-config-file pyproject.toml \
            --allowlist tests/stubtest-allowlist.txt
        say "mypy over the package"
        "$VENV/bin/python" -m mypy fabric
        say "pytest"
        exec "$VENV/bin/python" -m pytest -q "$@"
        ;;
    fuzz)
        system_deps
        fuzz_deps
        make -s -C csrc fuzz-smoke FUZZ_SECONDS="${1:-3600}"
        ;;
    bench)
        system_deps
        python_env
        for b in bench/*.py; do
            say "$b"
            "$VENV/bin/python" "$b"
        done
        ;;
    *)
        sed -n '2,9p' "$0"
        exit 2
        ;;
esac
