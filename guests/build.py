"""Build the C guests (``guests/*.c``) into WebAssembly modules, reproducibly.

Every guest is compiled with the same command, from the folder above ``guests/`` and with
relative paths, so the output is byte-identical from build to build and from machine to machine::

    python -m ziglang cc -target wasm32-wasi -O2 -s -mexec-model=reactor -msimd128 \\
        -Wl,-z,stack-size=65536 -I guests/sdk -o X.wasm guests/X.c

Usage::

    python guests/build.py              # rebuild guests/*.wasm in place
    python guests/build.py --out DIR    # build into DIR
    python guests/build.py --check      # exit 1 if a committed .wasm differs from a fresh build

(``python -m pipeline.guests.build`` is the same.) The first build on a machine takes ~20 s while
zig builds its libc; later ones take about a second per guest.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.errors import PipelineError

GUESTS_DIR = Path(__file__).resolve().parent
"""The folder holding the guest sources, the SDK and the committed modules."""

CFLAGS = (
    "-target",
    "wasm32-wasi",
    "-O2",
    "-s",  # no debug info: ~20x smaller and reproducible
    "-mexec-model=reactor",  # exports _initialize, no main
    "-msimd128",  # the CSV scanner classifies 64 bytes at a time
    "-Wl,-z,stack-size=65536",  # the default 16 MiB stack would be in every snapshot
)
"""Compiler flags shared by every guest."""


def guest_sources() -> list[Path]:
    """The C sources of the guests, one module each, sorted by name."""
    return sorted(GUESTS_DIR.glob("*.c"))


def compile_command(source: Path, output: Path) -> list[str]:
    """The compiler command line building ``source`` into ``output`` (run from GUESTS_DIR.parent).

    Sources under GUESTS_DIR are named relative to it, so the command (and the module) does not
    depend on where the checkout lives; others (a guest of your own) by their absolute path.
    """
    base = GUESTS_DIR.parent
    source = source.resolve()
    name = source.relative_to(base).as_posix() if source.is_relative_to(base) else str(source)
    return [
        sys.executable,
        "-m",
        "ziglang",
        "cc",
        *CFLAGS,
        "-I",
        (GUESTS_DIR / "sdk").relative_to(base).as_posix(),
        "-o",
        str(output.resolve()),
        name,
    ]


def build(source: Path, output: Path) -> Path:
    """Compile one guest source into ``output``; raise PipelineError with the compiler's output."""
    if importlib.util.find_spec("ziglang") is None:
        raise PipelineError(
            "cannot build guests: the ziglang package is not installed",
            hint="pip install 'wasm-pipeline[build]'",
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        compile_command(source, output),
        cwd=GUESTS_DIR.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise PipelineError(f"building {source.name} failed:\n{(result.stderr or result.stdout).strip()}")
    output.chmod(0o644)  # a module is data, not an executable
    return output


def build_all(out_dir: Path) -> list[Path]:
    """Build every guest into ``out_dir`` (created if needed); return the module paths."""
    return [build(source, Path(out_dir) / f"{source.stem}.wasm") for source in guest_sources()]


def check() -> list[str]:
    """Rebuild into a temporary folder; describe every committed module that differs or is missing."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in build_all(Path(tmp)):
            committed = GUESTS_DIR / fresh.name
            if not committed.is_file():
                problems.append(f"{fresh.name}: not built (run python guests/build.py)")
            elif committed.read_bytes() != fresh.read_bytes():
                problems.append(f"{fresh.name}: differs from a fresh build of {fresh.stem}.c")
    sources = {source.stem for source in guest_sources()}
    problems += [
        f"{module.name}: no {module.stem}.c to build it from"
        for module in sorted(GUESTS_DIR.glob("*.wasm"))
        if module.stem not in sources
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description="Build the C guests into WebAssembly modules.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", type=Path, help="build into this folder instead of guests/")
    group.add_argument("--check", action="store_true", help="fail if a committed .wasm is stale")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check()
            for problem in problems:
                print(problem, file=sys.stderr)
            if not problems:
                print(f"all {len(guest_sources())} guest modules are up to date")
            return 1 if problems else 0
        for path in build_all(args.out or GUESTS_DIR):
            print(f"built {path} ({path.stat().st_size:,} bytes)")
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
