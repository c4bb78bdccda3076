"""The test lock (requirements/test.txt): exact versions of every package a clean ``pip install -e ".[test,docs]"``
installs, torch's included, so that ``make test`` and CI run against the same peers every day.

  python requirements/lock.py write requirements/test.txt   what this venv has installed, as the lock (make lock)
  python requirements/lock.py check requirements/test.txt   refuse a venv the lock does not describe (make test)
  python requirements/lock.py diff  requirements/test.txt   what this venv has that the lock does not (test-latest)

Versions are written without a local label (torch "2.13.0", not "2.13.0+cpu"): which build of torch 2.13.0 is
installed is the Makefile's TORCH install, done first; on this machine's kind that is the CPU wheel on local disk.
"""
import re
import subprocess
import sys
from pathlib import Path

HEADER = """\
# The lock of the test and docs extras: every package a clean `pip install -e ".[test,docs]"` installs, at the
# version the suite was last run against, torch 2.13.0 (the CPU build, which make installs first) included.
# `make test` and .ci/run install with `pip install -c requirements/test.txt -e ".[test]"` (and `make docs` the docs
# extra the same way), so a new release of a peer (transformers, tokenizers, sentencepiece, mkdocs, ...) never
# changes what the tests see; users of the library still get the ranges in pyproject.toml.
# Update it on purpose: `make test-latest` (the newest peers in .venv-latest, parity tests), then `make lock`
# (rewrites this file from a clean venv), `make test`, and commit it with any docs/tokenizers.md change.
# Written on Python {python} by requirements/lock.py.
"""


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, tuple[str, str]]:
    """normalised name -> (name as pip spells it, version without its local label), for this interpreter's venv
    (the editable qkv aside)."""
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                         capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            found[_name(name)] = (name, version.split("+")[0])
    return found


def locked(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==", 1)
            pins[_name(name)] = version.strip()
    return pins


def main(command: str, path: str) -> int:
    lock, have = Path(path), installed()
    if command == "write":
        python = ".".join(map(str, sys.version_info[:2]))
        body = "".join(f"{name}=={version}\n" for name, version in sorted(have.values(), key=lambda x: _name(x[0])))
        lock.write_text(HEADER.format(python=python) + body, encoding="utf-8")
        print(f"{lock}: {len(have)} packages pinned")
        return 0
    pins = locked(lock)
    differ = [f"{name} {version} (locked {pins[key]})" for key, (name, version) in sorted(have.items())
              if key in pins and pins[key] != version]
    unpinned = [f"{name} {version} (not in the lock)" for key, (name, version) in sorted(have.items())
                if key not in pins]
    if command == "diff":
        print("\n".join(f"differs from {lock}: {d}" for d in differ + unpinned)
              or f"{lock}: the newest releases are the locked ones")
        return 0
    if differ or unpinned:  # check
        print(f"{lock} does not describe this venv: {'; '.join(differ + unpinned)}. Installed by hand? "
              f"`make clean test` starts from a fresh venv. A new dependency? `make lock` updates the lock on purpose.",
              file=sys.stderr)
        return 1
    print(f"{lock}: all {len(have)} installed packages are the locked versions")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check", "diff"):
        sys.exit(f"usage: python {sys.argv[0]} write|check|diff LOCKFILE")
    sys.exit(main(*sys.argv[1:]))
