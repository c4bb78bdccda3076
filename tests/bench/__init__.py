"""Smoke tests of the benchmark scripts, tiny and untimed."""
import importlib.util
import random
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def load_bench(name: str):
    """bench/<name>.py imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def word_corpus(path: Path, words: str, lines: int, per_line: int, seed: int) -> Path:
    """A made-up text, ``lines`` lines of ``per_line`` words drawn from ``words``, written to ``path``."""
    rng = random.Random(seed)
    vocabulary = words.split()
    path.write_text("\n".join(" ".join(rng.choice(vocabulary) for _ in range(per_line)) for _ in range(lines)))
    return path
