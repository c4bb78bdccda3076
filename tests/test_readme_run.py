"""Every fenced block of README.md runs, in README order, in one temporary folder, on a small budget: so a README
line that breaks fails the suite.

README.md is parsed here: each bash command (lines joined at a trailing backslash, comments dropped) and each Python
block is one unit. A unit runs unless ``NOT_RUN`` names it with the reason; a block of another kind (quoted output)
must be named there too, so a new block is covered, or refused, without editing this file. The budget is
``BUDGET``, a table of visible substitutions (fewer steps, a free port); nothing else in a line changes. The files
the lines assume and the hub ids they name come from tests/readme_world.py (local sources, an offline hub cache).
A command passes when it exits 0 and writes what it names (``--out``, ``--out-dir``, ``> file``).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# (kind, start of the unit's text) -> why it is not run.
NOT_RUN = {
    ("bash", "make test"): "runs this very suite (after creating .venv): a test cannot run the suite it is in",
    ("bash", "torchrun "): "two training processes over gloo; tests/test_train.py runs the same entry under two "
                           "processes (mp.spawn) and checks it equals one",
    ("text", "Hugging Face architectures"): "quoted output of `qkv info --supported`, kept equal to it by "
                                            "tests/test_readme.py",
}

# The budget: (pattern, replacement, why). Applied in order to every unit; nothing else is changed.
BUDGET = [
    (r"^make demo$", "qkv demo --out runs/demo --max-steps 30",
     "the Makefile's demo target is `qkv demo --out runs/demo` in its venv; 30 steps, not the tuned default"),
    (r"--max-steps \d+", "--max-steps 4", "a few optimizer steps"),
    (r"--warmup-steps \d+", "--warmup-steps 1", "warmup within the 4 steps"),
    (r"--eval-every \d+", "--eval-every 2", "an evaluation within the 4 steps"),
    (r"--port 8000", "--port {port}", "a free port: the machine may be serving 8000"),
    (r'data="train\.tsv", ', 'data="train.tsv", max_steps=4, ', "a few optimizer steps (Python)"),
]

# An org/name after a flag or call that takes a folder or hub id, and not one of the folders the README's lines (runs/)
# or readme_world (path/to/...) make.
HUB_ID = re.compile(r"(?:--hf|--init|--from-hf|from_hf\(|Tokenizer\.load\()\s*\"?(?!runs/|path/)"
                    r"([A-Za-z][\w.-]*/[\w.-]+)(?![\w/.-])")
STEP_TIMEOUT = 900


@dataclass
class Unit:
    kind: str  # "bash", "python" or the block's other language ("text" when none)
    line: int  # README line where it starts
    text: str

    def name(self) -> str:
        return f"README.md:{self.line}: {self.text.splitlines()[0][:90]}"


def _strip_comment(line: str) -> str:
    """A bash line without its comment: from a ``#`` that starts a word outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _bash_commands(body: str, first_line: int) -> list[Unit]:
    units, pending, start = [], "", None
    for k, raw in enumerate(body.splitlines()):
        line = _strip_comment(raw)
        if not line.strip() and not pending:
            continue
        start = first_line + k if not pending else start
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        units.append(Unit("bash", start, (pending + line.strip()).strip()))
        pending = ""
    return units


def readme_units(text: str) -> list[Unit]:
    """The README's runnable units in order (see the module docstring)."""
    units = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        lang, body = m.group(1) or "text", m.group(2)
        first = text.count("\n", 0, m.start(2)) + 1
        if lang in ("bash", "sh", "shell"):
            units += _bash_commands(body, first)
        else:
            units.append(Unit(lang, first, body))
    return units


def not_run_reason(unit: Unit) -> str | None:
    return next((why for (kind, start), why in NOT_RUN.items()
                 if kind == unit.kind and unit.text.lstrip().startswith(start)), None)


def on_budget(text: str, port: int) -> str:
    for pattern, replacement, _ in BUDGET:
        text = re.sub(pattern, replacement.replace("{port}", str(port)), text, flags=re.M)
    return text


# -- the coverage rules: fast, no command run ----------------------------------------------------------------------

def test_every_readme_block_is_run_or_listed_with_a_reason():
    units = readme_units(README.read_text(encoding="utf-8"))
    unlisted = [u.name() for u in units if u.kind not in ("bash", "python") and not_run_reason(u) is None]
    assert not unlisted, f"README blocks neither run nor listed in NOT_RUN: {unlisted}"
    stale = [key for key in NOT_RUN if not any(u.kind == key[0] and u.text.lstrip().startswith(key[1])
                                               for u in units)]
    assert not stale, f"NOT_RUN names units README.md no longer has: {stale}"
    assert sum(u.kind == "python" for u in units) >= 3 and sum(u.kind == "bash" for u in units) >= 30


def test_every_budget_substitution_applies_to_some_readme_unit():
    units = [u for u in readme_units(README.read_text(encoding="utf-8")) if not_run_reason(u) is None]
    unused = [p for p, _, _ in BUDGET if not any(re.search(p, u.text, re.M) for u in units)]
    assert not unused, f"BUDGET rows matching no README line (drop them): {unused}"


def test_the_parser_joins_continuations_and_drops_comments_only():
    units = _bash_commands('a --x "b # c" \\\n    --y 1  # note\n\n# only a comment\nd\n', 10)
    assert [(u.line, u.text) for u in units] == [(10, 'a --x "b # c" --y 1'), (14, "d")]


def test_every_hub_id_the_readme_names_has_an_offline_stand_in():
    from tests.readme_world import HUB_FOLDERS
    ids = {m.group(1) for u in readme_units(README.read_text(encoding="utf-8")) for m in HUB_ID.finditer(u.text)}
    assert ids and ids <= set(HUB_FOLDERS), sorted(ids - set(HUB_FOLDERS))


# -- running them --------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(root: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # qkv, python of this venv
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(HF_HOME=str(root / "hf-home"), HF_HUB_CACHE=str(root / "hub"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return env


def _written(command: str) -> list[str]:
    """The paths a command says it writes: what follows --out / --out-dir / a > redirection."""
    return re.findall(r"(?:--out|--out-dir|>)\s+([^\s&;|]+)", command)


def _serve(command: str, port: int, root: Path, env: dict) -> str | None:
    """A serving command: started, its page fetched from 127.0.0.1:port, stopped. None if the page came."""
    proc = subprocess.Popen(["bash", "-c", command], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    if r.status == 200 and b"<html" in r.read().lower():
                        return None
            except OSError:
                time.sleep(1)
        return f"no page on 127.0.0.1:{port} (exit {proc.poll()})"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
        if proc.returncode not in (0, -signal.SIGTERM, 128 + signal.SIGTERM, 143):
            return f"exit {proc.returncode} after SIGTERM: {out[-1500:]}"


def _run(unit: Unit, text: str, root: Path, env: dict, prelude: str, port: int) -> str | None:
    """Run one unit; None when it passed, else what went wrong."""
    if unit.kind == "python":
        args = [sys.executable, "-c", text]
    elif " explore " in f" {text} " and "--port" in text:
        return _serve(prelude + text, port, root, env)
    else:
        args = ["bash", "-c", prelude + text]
    out = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    if out.returncode != 0:
        return f"exit {out.returncode}: {(out.stderr or out.stdout)[-1500:]}"
    missing = [p for p in _written(text) if not (root / p).exists()]
    return f"did not write {missing}" if missing else None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    from tests.readme_world import build_hub, make_files
    root = tmp_path_factory.mktemp("readme")
    units = readme_units(README.read_text(encoding="utf-8"))
    make_files(root)
    build_hub(root / "hub", [m.group(1) for u in units for m in HUB_ID.finditer(u.text)], root / "hub-src")
    return root, units


@pytest.mark.slow
def test_every_readme_line_runs_in_order_on_a_small_budget(world):
    """All units in README order in one folder (later lines read what earlier ones wrote); every failure is
    collected, so one broken line does not hide the next."""
    root, units = world
    env, port, prelude, failures, ran = _environment(root), _free_port(), "", [], 0
    for unit in units:
        if not_run_reason(unit) is not None:
            continue
        text = on_budget(unit.text, port)
        t0 = time.monotonic()
        error = _run(unit, text, root, env, prelude, port)
        if unit.kind == "bash" and re.fullmatch(r"[A-Za-z_]\w*=\S.*", text):  # an assignment: kept for later lines
            prelude += text + "\n"
        ran += 1
        print(f"{time.monotonic() - t0:6.1f} s  {'FAIL' if error else 'ok  '}  {unit.name()}")
        if error:
            failures.append(f"{unit.name()}\n  ran: {text.splitlines()[0][:200]}\n  {error}")
    assert ran >= 30
    assert not failures, f"{len(failures)} README unit(s) failed:\n\n" + "\n\n".join(failures)
