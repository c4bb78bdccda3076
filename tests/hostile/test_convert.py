"""qkv convert on a full disk (or any failed write): one line naming the path, nothing left at --out, and the same
command then runs to the end. Before, it named no path and left a half-written folder that refused the rerun."""
import errno

import pytest

import qkv
from qkv.cli import main

from .conftest import refused


def _full_disk_after(monkeypatch, module, name, calls: int):
    """``module.name`` writes ``calls`` times, then meets a full disk."""
    real, seen = getattr(module, name), []

    def write(*args, **kwargs):
        seen.append(1)
        if len(seen) > calls:
            raise OSError(errno.ENOSPC, "No space left on device", str(args[-1]) if args else None)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, write)


@pytest.mark.parametrize("to_hf", [False, True])
def test_a_full_disk_leaves_nothing_at_out_and_the_rerun_writes_it(world, lm_folder, monkeypatch, capsys, to_hf):
    import safetensors.torch
    out = world.root / "converted"
    argv = ["convert", "--checkpoint", lm_folder, "--out", out] + (["--to-hf"] if to_hf else [])
    with monkeypatch.context() as m:
        _full_disk_after(m, safetensors.torch, "save_file", 0)
        _full_disk_after(m, safetensors.torch, "save_model", 0)
        line = refused(capsys, argv, "--out", str(out), "No space left on device", "run the command again")
    assert not out.exists(), "a half-written --out would refuse the rerun"
    assert not [p.name for p in world.root.iterdir() if ".partial-" in p.name], line
    assert main([str(a) for a in argv]) == 0
    assert "wrote" in capsys.readouterr().out
    reread = qkv.from_hf(out) if to_hf else qkv.load(out)
    assert reread.num_parameters() == qkv.load(lm_folder).num_parameters()


def test_an_empty_out_folder_is_filled_and_a_full_one_refused(world, lm_folder, capsys):
    out = world.root / "empty"
    out.mkdir()
    assert main(["convert", "--checkpoint", str(lm_folder), "--out", str(out)]) == 0
    assert (out / "config.json").is_file()
    capsys.readouterr()
    refused(capsys, ["convert", "--checkpoint", lm_folder, "--out", out], "--out", "not empty")
