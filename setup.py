"""Build the one extension module, ``fabric._core``.

Everything else about the package lives in ``pyproject.toml``; this file only
assembles the C core (``csrc/``) and the CPython glue (``fabric/_ext/``) into
the extension and finds the system libraries they link with.
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup

# Each system library the extension links with: the pkg-config names it may
# go by, and the Debian package that provides it. Only libcrypto: msgpack-c is
# used by the C core's own tests (csrc/Makefile, a differential check of the
# encoder), never by the extension, so building the package does not need it.
SYSTEM_LIBS = [
    (("libcrypto",), "libssl-dev"),
]


def _fail(message):
    sys.stderr.write("\nerror: " + message + "\n\n")
    raise SystemExit(1)


def _pkg_config(names):
    """The flags of the first of ``names`` pkg-config knows, or None."""
    for name in names:
        try:
            out = subprocess.run(["pkg-config", "--cflags", "--libs", name],
                                 check=True, capture_output=True, text=True).stdout
        except subprocess.CalledProcessError:
            continue
        return out.split()
    return None


def _flags():
    """Compiler and linker flags of SYSTEM_LIBS; every missing library is
    reported at once, with the Debian packages that bring them."""
    if shutil.which("pkg-config") is None:
        packages = ["pkg-config"] + [pkg for _, pkg in SYSTEM_LIBS]
        _fail("pkg-config is not installed, so the system libraries cannot be found. "
              "Install what the build needs with:\n    sudo apt-get install "
              + " ".join(packages))
    include_dirs, library_dirs, libraries, extra = [], [], [], []
    missing = []
    for names, package in SYSTEM_LIBS:
        flags = _pkg_config(names)
        if flags is None:
            missing.append((names, package))
            continue
        for flag in flags:
            if flag.startswith("-I"):
                include_dirs.append(flag[2:])
            elif flag.startswith("-L"):
                library_dirs.append(flag[2:])
            elif flag.startswith("-l"):
                libraries.append(flag[2:])
            else:
                extra.append(flag)
    if missing:
        what = "; ".join("%s (pkg-config name %s)" % (names[0], " or ".join(names))
                         for names, _ in missing)
        _fail("missing system libraries: %s. Install them with:\n    sudo apt-get install %s"
              % (what, " ".join(pkg for _, pkg in missing)))
    return include_dirs, library_dirs, libraries, extra


def _extension():
    here = os.path.dirname(os.path.abspath(__file__))
    os.chdir(here)
    include_dirs, library_dirs, libraries, extra = _flags()
    sources = sorted(glob.glob("csrc/*.c")) + sorted(glob.glob("fabric/_ext/*.c"))
    depends = (sorted(glob.glob("csrc/include/fabric/*.h"))
               + sorted(glob.glob("csrc/*.h"))
               + sorted(glob.glob("fabric/_ext/*.h")))
    cflags = ["-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
              "-D_GNU_SOURCE", "-O2", "-fvisibility=hidden", "-fno-plt"]
    if os.environ.get("CI"):
        # Warnings are errors in CI so a new one cannot slip in unnoticed.
        cflags.append("-Werror")
    return Extension(
        "fabric._core",
        sources=sources,
        depends=depends,
        include_dirs=["csrc/include", "fabric/_ext"] + include_dirs,
        library_dirs=library_dirs,
        libraries=libraries + ["pthread"],
        extra_compile_args=cflags + extra,
    )


setup(ext_modules=[_extension()])
