"""Compiled CasADi functions, built once and cached on disk.

CasADi's virtual machine interprets an SX graph node by node; the same graph as C, compiled with
``-O2``, runs several times faster. The C text is generated from the function itself, so its hash is
a key for "this problem, these derivatives": the shared object is compiled once per distinct problem
(per machine and compiler) and reused by every later build, in this process or another.

Where no C compiler is found, or compiling fails, the interpreted function is returned unchanged and
the caller is told (``Compiled.compiled`` is False, ``Compiled.note`` says why): the controller stays
correct, only slower.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import casadi as ca

# Bump when the compile recipe changes, so old objects are not reused for a different recipe.
_RECIPE = "gcc-O2-fPIC-shared-v1"
_FLAGS = ("-O2", "-fPIC", "-shared")


@dataclass(frozen=True)
class Compiled:
    """A function as it will be called: compiled (loaded from ``path``) or the interpreted original."""

    function: ca.Function
    compiled: bool
    path: Path | None
    reused: bool
    note: str


def default_cache_dir() -> Path:
    """``$BIOIMP_CACHE_DIR`` if set, else ``~/.cache/bioimp``."""
    env = os.environ.get("BIOIMP_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "bioimp"


def find_compiler() -> str | None:
    """The C compiler to use: ``$CC`` if it is on the PATH, else ``gcc`` or ``cc``; None if none."""
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return name
    return None


def compile_function(
    fn: ca.Function, cache_dir: str | Path | None = None, compiler: str | None = None
) -> Compiled:
    """Return ``fn`` compiled to a shared object in ``cache_dir`` (reused if already there).

    Args:
        fn: the function to compile (its name must be a C identifier).
        cache_dir: directory for the generated C and shared objects (default :func:`default_cache_dir`).
        compiler: C compiler command (default :func:`find_compiler`).

    Returns:
        The compiled function, or ``fn`` itself with ``compiled=False`` and the reason in ``note``.
    """
    cc = compiler or find_compiler()
    if cc is None or shutil.which(cc) is None:
        return Compiled(fn, False, None, False, "no C compiler found: interpreted")
    gen = ca.CodeGenerator(f"{fn.name()}.c")
    gen.add(fn)
    source = gen.dump()
    key = hashlib.sha256(f"{_RECIPE}\n{cc}\n{ca.CasadiMeta.version()}\n{source}".encode()).hexdigest()[:20]
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = directory / f"{fn.name()}_{key}.so"
    reused = target.exists()
    if not reused:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # Compile in a private temporary directory, then rename into place: a concurrent build of
            # the same problem either finds the finished object or replaces it atomically.
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                c_file = Path(tmp) / f"{fn.name()}.c"
                c_file.write_text(source)
                so_file = Path(tmp) / target.name
                subprocess.run(
                    [cc, *_FLAGS, str(c_file), "-o", str(so_file), "-lm"],
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
                os.replace(so_file, target)
        except (OSError, subprocess.SubprocessError) as exc:
            return Compiled(fn, False, None, False, f"compiling failed ({type(exc).__name__}): interpreted")
    loaded = ca.external(fn.name(), str(target))
    return Compiled(loaded, True, target, reused, "reused" if reused else "compiled")
