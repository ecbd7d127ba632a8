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

# Each system library: the pkg-config names it may go by, and the Debian
# package that provides it.
SYSTEM_LIBS = [
    (("libcrypto",), "libssl-dev"),
    (("msgpack-c", "msgpack"), "libmsgpack-dev"),
]


def _fail(message):
    sys.stderr.write("\nerror: " + message + "\n\n")
    raise SystemExit(1)


def _pkg_config(names, debian_package):
    if shutil.which("pkg-config") is None:
        _fail("pkg-config is not installed. Install it with: "
              "sudo apt-get install pkg-config " + debian_package)
    for name in names:
        try:
            out = subprocess.run(["pkg-config", "--cflags", "--libs", name],
                                 check=True, capture_output=True, text=True).stdout
        except subprocess.CalledProcessError:
            continue
        return out.split()
    _fail("%s was not found by pkg-config (looked for %s). Install it with: "
          "sudo apt-get install %s" % (names[0], ", ".join(names), debian_package))


def _flags():
    include_dirs, library_dirs, libraries, extra = [], [], [], []
    for names, package in SYSTEM_LIBS:
        for flag in _pkg_config(names, package):
            if flag.startswith("-I"):
                include_dirs.append(flag[2:])
            elif flag.startswith("-L"):
                library_dirs.append(flag[2:])
            elif flag.startswith("-l"):
                libraries.append(flag[2:])
            else:
                extra.append(flag)
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
