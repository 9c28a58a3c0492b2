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


def _shared_object(
    name: str, source: str, cache_dir: str | Path | None, compiler: str | None, flags: tuple[str, ...]
) -> tuple[Path | None, bool, str]:
    """Compile C ``source`` to ``<cache>/<name>_<hash>.so`` unless it is already there.

    Returns:
        The object's path (None if it could not be made), whether it was reused, and a note saying which.
    """
    cc = compiler or find_compiler()
    if cc is None or shutil.which(cc) is None:
        return None, False, "no C compiler found: interpreted"
    recipe = f"gcc{' '.join(flags)}-v1"
    key = hashlib.sha256(f"{recipe}\n{cc}\n{ca.CasadiMeta.version()}\n{source}".encode()).hexdigest()[:20]
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = directory / f"{name}_{key}.so"
    if target.exists():
        return target, True, "reused"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Compile in a private temporary directory, then rename into place: a concurrent build of
        # the same problem either finds the finished object or replaces it atomically.
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            c_file = Path(tmp) / f"{name}.c"
            c_file.write_text(source)
            so_file = Path(tmp) / target.name
            subprocess.run(
                [cc, *flags, "-fPIC", "-shared", str(c_file), "-o", str(so_file), "-lm"],
                check=True,
                capture_output=True,
                timeout=600,
            )
            os.replace(so_file, target)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, False, f"compiling failed ({type(exc).__name__}): interpreted"
    return target, False, "compiled"


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
    gen = ca.CodeGenerator(f"{fn.name()}.c")
    gen.add(fn)
    path, reused, note = _shared_object(fn.name(), gen.dump(), cache_dir, compiler, ("-O2",))
    if path is None:
        return Compiled(fn, False, None, False, note)
    return Compiled(ca.external(fn.name(), str(path)), True, path, reused, note)


def compile_nlp(
    solver: ca.Function, cache_dir: str | Path | None = None, compiler: str | None = None
) -> tuple[Path | None, str]:
    """The NLP functions of an ``nlpsol`` (its problem and every derivative Ipopt calls) as one shared
    object, for ``nlpsol(name, plugin, path, opts)``; None and the reason where it cannot be compiled.

    ``-O1``: an NLP's Hessian is megabytes of C, which ``-O2`` takes minutes to compile for little gain.
    """
    gen = ca.CodeGenerator(f"{solver.name()}_nlp.c")
    gen.add(solver.oracle())
    for name in solver.get_function():
        gen.add(solver.get_function(name))
    path, _, note = _shared_object(f"{solver.name()}_nlp", gen.dump(), cache_dir, compiler, ("-O1",))
    return path, note
