"""The hostile-input suite's world: tiny artifacts of every kind qkv reads, a planted-payload marker, and a sibling
folder whose every byte is checked after each test.

Every test here runs in a ``world``: ``world.outside`` is a folder beside the files under attack (symlinks and
``..`` paths point into it), and ``world.marker`` a file a planted pickle payload would create. After the test the
outside folder must hash as before and the marker must not exist, whatever the test did.
"""
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

import qkv
from qkv.cli import main
from qkv.data import CharTokenizer

TEXT = ("The keeper lit the lamps before the rain.\nAll the boats were tied, and the doors were shut.\n"
        "Is the harbour quiet now?\n") * 20


class Payload:
    """A pickle that touches ``path`` when unpickled with code allowed (``__reduce__`` returns a call)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def snapshot(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


class World:
    def __init__(self, root: Path):
        self.root = root
        self.outside = root / "outside"
        self.outside.mkdir()
        (self.outside / "secret.txt").write_text("nothing here may change\n")
        (self.outside / "model.safetensors").write_bytes(b"\0" * 64)
        (self.outside / "sub").mkdir()
        (self.outside / "sub" / "notes.txt").write_text("keep me\n")
        self.marker = self.outside / "PAYLOAD_RAN"
        self.before = snapshot(self.outside)

    def payload(self):
        return Payload(self.marker)


@pytest.fixture(autouse=True)
def world(tmp_path):
    w = World(tmp_path)
    yield w
    assert not w.marker.exists(), "a planted pickle payload ran"
    assert snapshot(w.outside) == w.before, "a file outside the folder under attack changed"


def refused(capsys, argv, *culprits):
    """Run ``qkv ARGV`` in-process: it must exit non-zero with exactly one error line, no traceback, naming every
    culprit given. Returns the error line."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    captured = capsys.readouterr()
    err = captured.err
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert rc not in (0, None), f"exit status {rc}; stderr: {err}"
    assert "Traceback" not in err and "Traceback" not in captured.out
    assert len(lines) == 1, err
    for c in culprits:
        assert str(c) in lines[0], f"{c!r} not in {lines[0]!r}"
    if os.environ.get("QKV_SHOW_REFUSALS"):  # to read every message: QKV_SHOW_REFUSALS=1 pytest -s tests/hostile
        print(f"\n  {' '.join(map(str, argv))[:100]}\n    -> {lines[0]}", file=sys.__stderr__)
    return lines[0]


def ok(capsys, argv):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# -- artifacts (built once, copied before being damaged) -----------------------------------------------------------

@pytest.fixture(scope="session")
def tok():
    return CharTokenizer.train(iter([TEXT]))  # every special role, <unk> included


@pytest.fixture(scope="session")
def lm_folder(tmp_path_factory, tok):
    """A qkv decoder folder (learned positions) with its tokenizer/."""
    folder = tmp_path_factory.mktemp("art") / "lm"
    cfg = qkv.preset("gpt2-tiny", vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=2, max_positions=64)
    qkv.build(cfg).save(folder)
    tok.save(folder / "tokenizer")
    return folder


@pytest.fixture(scope="session")
def rope_folder(tmp_path_factory, tok):
    """A qkv decoder folder with rotary positions (no position table limits how far it may decode)."""
    folder = tmp_path_factory.mktemp("art") / "rope"
    cfg = qkv.preset("llama-tiny", vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_kv_heads=1, d_ff=32,
                     n_layers=2)
    qkv.build(cfg).save(folder)
    tok.save(folder / "tokenizer")
    return folder


@pytest.fixture(scope="session")
def s2s_folder(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("art") / "s2s"
    cfg = qkv.preset("transformer-tiny", vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32,
                     max_positions=32, pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                     decoder_start_token_id=tok.bos_id)
    qkv.build(cfg).save(folder)
    tok.save(folder / "tokenizer")
    return folder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("art") / "corpus.txt"
    p.write_text(TEXT)
    return p


@pytest.fixture(scope="session")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("art")
    src, tgt = d / "train.en", d / "train.es"
    src.write_text("".join(f"{i} more\n" for i in range(40)))
    tgt.write_text("".join(f"{i} mas\n" for i in range(40)))
    return src, tgt


TINY_RUN = Path(__file__).with_name("tiny_run.yaml")  # gpt-char-tiny cut to one narrow layer: runs take ~0.1 s


def tiny_model():
    """The model config of TINY_RUN, for runs started through the API."""
    import yaml
    spec = yaml.safe_load(TINY_RUN.read_text())
    return qkv.preset(spec["preset"], **spec["model"])


def train_argv(data, out, *extra):
    return ["train", "--config", TINY_RUN, "--data", data, "--out-dir", out, "--max-steps", "4",
            "--eval-every", "2", "--eval-steps", "1", "--block-size", "8", "--batch-size", "2", "--keep-last", "0",
            "--log-every", "1", "--no-progress", *extra]


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory, corpus):
    """A finished 4-step training run (checkpoints at steps 2 and 4), made through the CLI."""
    out = tmp_path_factory.mktemp("art") / "run"
    assert main([str(a) for a in train_argv(corpus, out)]) == 0
    return out


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    """A Hugging Face GPT-2 folder written by qkv.to_hf, with a byte-level BPE tokenizer.json."""
    from qkv.data import train_bpe
    folder = tmp_path_factory.mktemp("art") / "hf"
    bpe = train_bpe(iter([TEXT]), vocab_size=300)
    cfg = qkv.preset("gpt2-tiny", vocab_size=bpe.vocab_size, d_model=16, n_heads=2, n_layers=2, max_positions=64,
                     extra={"hf_model_type": "gpt2"})
    qkv.to_hf(qkv.build(cfg), folder)
    bpe.hf.save(str(folder / "tokenizer.json"))
    return folder


def rwkv_state(n_layers=2, V=40, C=16, F=32):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {"emb.weight": r(V, C), "blocks.0.ln0.weight": torch.ones(C), "blocks.0.ln0.bias": torch.zeros(C),
          "ln_out.weight": torch.ones(C), "ln_out.bias": torch.zeros(C), "head.weight": r(V, C)}
    for i in range(n_layers):
        b = f"blocks.{i}."
        sd.update({b + "ln1.weight": torch.ones(C), b + "ln1.bias": torch.zeros(C), b + "ln2.weight": torch.ones(C),
                   b + "ln2.bias": torch.zeros(C), b + "att.time_decay": r(C), b + "att.time_first": r(C),
                   b + "att.time_mix_k": torch.rand(1, 1, C), b + "att.time_mix_v": torch.rand(1, 1, C),
                   b + "att.time_mix_r": torch.rand(1, 1, C), b + "att.key.weight": r(C, C),
                   b + "att.value.weight": r(C, C), b + "att.receptance.weight": r(C, C),
                   b + "att.output.weight": r(C, C), b + "ffn.time_mix_k": torch.rand(1, 1, C),
                   b + "ffn.time_mix_r": torch.rand(1, 1, C), b + "ffn.key.weight": r(F, C),
                   b + "ffn.receptance.weight": r(C, C), b + "ffn.value.weight": r(C, F)})
    return sd


def edit_json(path: Path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def flip_byte(path: Path, offset_from_end: int = 3):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


python = sys.executable
