"""Hostile files and folders through every public loader (qkv.load, from_hf, from_rwkv, Tokenizer.load) and the
subcommands that read them: planted pickles never run, claimed sizes are checked before anything is built,
damaged weights and escaping paths are refused, each with one line naming the culprit."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import qkv
from qkv.data import Tokenizer

from .conftest import copy, edit_json, flip_byte, refused, rwkv_state

ROOT = Path(__file__).resolve().parents[2]


# -- 1. nothing is unpickled with code --------------------------------------------------------------------------

UNSAFE = "weights_only" + "=False"  # spelled in two pieces so that `git grep` finds it nowhere in the repository


def test_no_file_of_the_repository_asks_torch_load_for_code():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    files = files or [str(p.relative_to(ROOT)) for p in (ROOT / "qkv").rglob("*.py")]  # not a git checkout
    hits = [f for f in files if (ROOT / f).is_file() and UNSAFE in (ROOT / f).read_text(errors="replace")]
    assert hits == []


def _hf_with_bin(world, hf_folder, state):
    folder = copy(hf_folder, world.root / "hf")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("command", ["convert", "info", "generate"])
def test_a_pickled_payload_in_pytorch_model_bin_never_runs(world, hf_folder, capsys, command):
    folder = _hf_with_bin(world, hf_folder, {"transformer.wte.weight": world.payload()})
    argv = {"convert": ["convert", "--from-hf", folder, "--out", world.root / "out"],
            "info": ["info", "--hf", folder], "generate": ["generate", "--hf", folder, "--prompt", "The"]}[command]
    line = refused(capsys, argv, "pytorch_model.bin", "refused")
    assert UNSAFE not in line


def test_from_hf_refuses_a_payload_pickle_without_advising_unsafe_loading(world, hf_folder):
    folder = _hf_with_bin(world, hf_folder, [world.payload()])
    with pytest.raises(ValueError, match="pytorch_model.bin") as e:
        qkv.from_hf(folder)
    assert UNSAFE not in str(e.value)


def test_a_payload_in_a_sharded_bin_is_refused(world, hf_folder, capsys):
    folder = _hf_with_bin(world, hf_folder, {"transformer.wte.weight": torch.zeros(2)})
    (folder / "pytorch_model.bin").rename(folder / "pytorch_model-00001-of-00002.bin")
    torch.save({"transformer.wpe.weight": world.payload()}, folder / "pytorch_model-00002-of-00002.bin")
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        "transformer.wte.weight": "pytorch_model-00001-of-00002.bin",
        "transformer.wpe.weight": "pytorch_model-00002-of-00002.bin"}}))
    refused(capsys, ["convert", "--from-hf", folder, "--out", world.root / "out"], "00002-of-00002.bin")


def test_an_rwkv_pth_payload_never_runs(world, capsys):
    pth = world.root / "model.pth"
    torch.save({**rwkv_state(), "blocks.0.att.key.weight": world.payload()}, pth)
    refused(capsys, ["convert", "--from-rwkv", pth, "--out", world.root / "out"], "model.pth", "refused")
    with pytest.raises(ValueError, match="refused"):
        qkv.from_rwkv(pth)


def test_a_legacy_non_zip_pickle_is_refused_unread(world):
    pth = world.root / "old.pth"
    torch.save({"emb.weight": world.payload()}, pth, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="old.pth.*zip"):
        qkv.from_rwkv(pth)


def test_a_pickled_trainer_state_of_an_older_qkv_is_refused_on_resume(world, lm_run, corpus, capsys):
    from .conftest import train_argv
    run = copy(lm_run, world.root / "run")
    for ckpt in (run / "checkpoints").iterdir():
        (ckpt / "trainer_state.json").unlink()
        (ckpt / "trainer_state.safetensors").unlink()
        (ckpt / "manifest.json").unlink()
        torch.save({"step": 2, "rng": world.payload()}, ckpt / "trainer_state.pt")
    refused(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"), "trainer_state.pt")
    with pytest.raises(ValueError, match="trainer_state.pt"):
        from qkv.checkpoint import load_trainer_state
        load_trainer_state(run / "checkpoints" / "step-0000004")


# -- 2. a tokenizer.json never pads or truncates -----------------------------------------------------------------

def test_tokenizer_json_padding_and_truncation_are_switched_off(world, hf_folder):
    spec = json.loads((hf_folder / "tokenizer.json").read_text())
    spec["padding"] = {"strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                       "pad_type_id": 0, "pad_token": "<pad>"}
    spec["truncation"] = {"direction": "Right", "max_length": 128, "strategy": "LongestFirst", "stride": 0}
    path = world.root / "tokenizer.json"
    path.write_text(json.dumps(spec))
    plain, padded = Tokenizer.load(hf_folder / "tokenizer.json"), Tokenizer.load(path)
    long_text = "the lamps before the rain " * 40
    assert padded.encode("The") == plain.encode("The")  # not 128 ids
    assert padded.encode(long_text) == plain.encode(long_text) and len(plain.encode(long_text)) > 128
    assert padded.encode_batch(["a", long_text]) == plain.encode_batch(["a", long_text])
    assert padded.decode(padded.encode(long_text)) == long_text


# -- 3. sizes are checked before anything is allocated ------------------------------------------------------------

@pytest.mark.parametrize("field,value,culprit", [
    ("n_layers", 1_000_000, "n_layers=1000000"), ("d_model", 1_000_000, "d_model"),
    ("vocab_size", 10**9, "vocab_size"), ("d_ff", 10**8, "d_ff"), ("max_positions", 10**9, "max_positions"),
    ("n_heads", 1, "weight")])
def test_a_qkv_config_claiming_sizes_its_weights_do_not_hold_is_refused(world, lm_folder, capsys, field, value,
                                                                        culprit):
    folder = copy(lm_folder, world.root / "m")
    heads = {"head_dim": 8, "n_kv_heads": 1} if field == "n_heads" else {}
    edit_json(folder / "config.json", **{field: value, **heads})
    (folder / "manifest.json").unlink()  # a hand-edited folder: no manifest to catch it first
    with pytest.raises(ValueError, match=culprit):
        qkv.load(folder)
    refused(capsys, ["generate", "--checkpoint", folder, "--max-new-tokens", "2"], culprit)


def test_info_on_a_million_layer_config_is_refused_quickly(world, lm_folder, capsys):
    folder = copy(lm_folder, world.root / "m")
    edit_json(folder / "config.json", n_layers=1_000_000)
    (folder / "manifest.json").unlink()
    refused(capsys, ["info", "--checkpoint", folder], "n_layers=1000000")


@pytest.mark.parametrize("field,value,culprit", [("n_layer", 1_000_000, "n_layers"), ("n_embd", 10**6, "d_model"),
                                                 ("vocab_size", 10**9, "vocab_size"), ("n_inner", 10**8, "d_ff")])
def test_an_hf_config_claiming_sizes_its_weights_do_not_hold_is_refused(world, hf_folder, capsys, field, value,
                                                                       culprit):
    folder = copy(hf_folder, world.root / "hf")
    edit_json(folder / "config.json", **{field: value})
    refused(capsys, ["convert", "--from-hf", folder, "--out", world.root / "out"], culprit)
    with pytest.raises(ValueError, match=culprit):
        qkv.from_hf(folder)


def test_one_stray_rwkv_key_cannot_claim_a_million_blocks(world, capsys):
    pth = world.root / "m.pth"
    torch.save({**rwkv_state(), "blocks.1000000.ln1.weight": torch.ones(16)}, pth)
    refused(capsys, ["convert", "--from-rwkv", pth, "--out", world.root / "out"], "n_layers", "1000001")
    with pytest.raises(ValueError, match="1000000"):
        qkv.from_rwkv(pth)


def test_max_new_tokens_beyond_memory_is_refused_by_the_api_and_the_cli(world, rope_folder, capsys):
    model = qkv.load(rope_folder)
    with pytest.raises(ValueError, match="max_new_tokens=1000000000"):
        qkv.generate(model, torch.tensor([[1, 2]]), max_new_tokens=10**9)
    with pytest.raises(ValueError, match="num_beams=100000"):
        qkv.generate(model, torch.tensor([[1, 2]]), max_new_tokens=10**5, num_beams=10**5)
    refused(capsys, ["generate", "--checkpoint", rope_folder, "--max-new-tokens", "1000000000"],
            "max_new_tokens=1000000000")


def test_build_refuses_a_model_larger_than_memory_before_allocating():
    with pytest.raises(ValueError, match="n_layers=10000000"):
        qkv.build(qkv.preset("gpt2-tiny", n_layers=10**7))
    with torch.device("meta"):  # shapes only: allowed, nothing is allocated
        assert qkv.build(qkv.preset("gpt2")).config.n_layers == 12


# -- 4. damaged weights -----------------------------------------------------------------------------------------

def test_a_flipped_byte_in_a_qkv_folder_is_refused_naming_the_file(world, lm_folder, capsys):
    folder = copy(lm_folder, world.root / "m")
    flip_byte(folder / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors.*sha256"):
        qkv.load(folder)
    refused(capsys, ["generate", "--checkpoint", folder], "model.safetensors", "sha256")


def test_a_checkpoint_without_its_manifest_is_refused(world, lm_run, capsys):
    run = copy(lm_run, world.root / "run")
    (run / "checkpoints" / "step-0000004" / "manifest.json").unlink()
    refused(capsys, ["generate", "--checkpoint", run], "manifest.json is missing")


def test_a_changed_config_in_a_checkpoint_is_refused(world, lm_run, capsys):
    run = copy(lm_run, world.root / "run")
    edit_json(run / "checkpoints" / "step-0000004" / "config.json", dropout=0.5)
    refused(capsys, ["generate", "--checkpoint", run], "config.json", "sha256")


@pytest.mark.parametrize("cut", [4, 40, 2000])
def test_a_truncated_safetensors_file_is_named_truncated(world, lm_folder, capsys, cut):
    folder = copy(lm_folder, world.root / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:cut] if cut < 100 else data[:-cut])
    (folder / "manifest.json").unlink()
    line = refused(capsys, ["generate", "--checkpoint", folder], "model.safetensors")
    assert "truncated" in line or "too short" in line


def test_a_safetensors_header_of_garbage_is_refused(world, lm_folder, capsys):
    folder = copy(lm_folder, world.root / "m")
    (folder / "model.safetensors").write_bytes((20).to_bytes(8, "little") + b"{not json at all....}" + b"\0" * 50)
    (folder / "manifest.json").unlink()
    # (info reads config.json only; every command that loads weights reads the header first)
    refused(capsys, ["convert", "--checkpoint", folder, "--out", world.root / "out"], "model.safetensors",
            "not valid JSON")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_an_hf_folder_with_non_finite_weights_is_refused_naming_the_tensor(world, hf_folder, capsys, bad):
    from qkv.files import load_safetensors
    folder = copy(hf_folder, world.root / "hf")
    state = load_safetensors(folder / "model.safetensors")
    state["transformer.h.1.mlp.c_fc.weight"][3, 2] = bad
    save_file(state, str(folder / "model.safetensors"))
    refused(capsys, ["convert", "--from-hf", folder, "--out", world.root / "out"], "transformer.h.1.mlp.c_fc.weight")


def test_an_rwkv_file_with_nan_is_refused(world):
    pth = world.root / "m.pth"
    state = rwkv_state()
    state["head.weight"][0, 0] = float("nan")
    torch.save(state, pth)
    with pytest.raises(ValueError, match="head.weight"):
        qkv.from_rwkv(pth)


def test_a_manifest_that_is_not_json_is_named(world, lm_folder, capsys):
    folder = copy(lm_folder, world.root / "m")
    (folder / "manifest.json").write_text("{oops")
    refused(capsys, ["generate", "--checkpoint", folder], "manifest.json", "not valid JSON")


# -- 6. paths that escape ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["../../../outside", "/etc", "checkpoints/../../outside", "../outside/sub"])
def test_latest_naming_a_path_outside_the_run_is_refused(world, lm_run, capsys, target):
    run = copy(lm_run, world.root / "run")
    (run / "latest").write_text(target + "\n")
    refused(capsys, ["generate", "--checkpoint", run], "latest", repr(target))


def test_latest_naming_an_absolute_checkpoint_is_refused(world, lm_run, capsys):
    run = copy(lm_run, world.root / "run")
    (run / "latest").write_text(str(lm_run / "checkpoints" / "step-0000004"))
    refused(capsys, ["generate", "--checkpoint", run], "latest")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_qkv_file_linking_outside_its_folder_is_refused(world, lm_folder, capsys, name):
    folder = copy(lm_folder, world.root / "m")
    (folder / name).unlink()
    (folder / "manifest.json").unlink()
    os.symlink(world.outside / ("model.safetensors" if name == "model.safetensors" else "secret.txt"), folder / name)
    refused(capsys, ["generate", "--checkpoint", folder], name, "outside the folder")


def test_a_tokenizer_folder_linking_outside_is_refused(world, lm_folder, capsys):
    folder = copy(lm_folder, world.root / "m")
    import shutil
    shutil.copytree(folder / "tokenizer", world.root / "elsewhere")
    shutil.rmtree(folder / "tokenizer")
    os.symlink(world.root / "elsewhere", folder / "tokenizer")
    refused(capsys, ["generate", "--checkpoint", folder], "tokenizer", "outside the folder")


def test_a_tokenizer_linking_outside_is_refused(world, lm_folder, capsys):
    folder = copy(lm_folder, world.root / "m")
    meta = folder / "tokenizer" / "qkv_tokenizer.json"
    (world.root / "elsewhere.json").write_text(meta.read_text())
    meta.unlink()
    os.symlink(world.root / "elsewhere.json", meta)
    refused(capsys, ["generate", "--checkpoint", folder], "qkv_tokenizer.json", "outside")


@pytest.mark.parametrize("shard", ["../outside/model.safetensors", "/etc/passwd", "sub/../../outside/x"])
def test_an_index_naming_a_shard_outside_the_folder_is_refused(world, hf_folder, capsys, shard):
    folder = copy(hf_folder, world.root / "hf")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"transformer.wte.weight": shard}}))
    refused(capsys, ["convert", "--from-hf", folder, "--out", world.root / "out"], repr(shard))


def test_an_hf_weights_link_outside_is_refused(world, hf_folder, capsys):
    folder = copy(hf_folder, world.root / "hf")
    real = world.root / "real.safetensors"
    (folder / "model.safetensors").rename(real)
    os.symlink(real, folder / "model.safetensors")
    refused(capsys, ["info", "--hf", folder], "model.safetensors", "outside the folder")


@pytest.mark.parametrize("path", ["../outside", "/tmp", "a/../../outside"])
def test_modules_json_pointing_outside_is_refused(world, hf_folder, capsys, path):
    top = world.root / "st"
    top.mkdir()
    (top / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": path,
                                                   "type": "sentence_transformers.models.Transformer"}]))
    refused(capsys, ["info", "--hf", top], "modules.json", repr(path))


def test_the_hugging_face_cache_layout_is_allowed_by_name(world, hf_folder, capsys):
    repo = world.root / "hub" / "models--org--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for f in hf_folder.iterdir():
        (blobs / f"hash-{f.name}").write_bytes(f.read_bytes())
        os.symlink(f"../../blobs/hash-{f.name}", snap / f.name)
    model = qkv.from_hf(snap)
    assert model.config.n_layers == 2
    # the same links from a folder that is not a cache snapshot are refused
    fake = world.root / "fake" / "snap"
    fake.mkdir(parents=True)
    for f in hf_folder.iterdir():
        os.symlink(blobs / f"hash-{f.name}", fake / f.name)
    refused(capsys, ["info", "--hf", fake], "outside the folder")


# -- 7. malformed files: one line naming the file ------------------------------------------------------------------

@pytest.mark.parametrize("content,words", [("[1, 2]", "a list"), ("{bad json", "not valid JSON"),
                                           ("\"gpt2\"", "a string"), (b"\xff\xfe{}", "UTF-8")])
def test_a_malformed_qkv_config_json_is_named(world, lm_folder, capsys, content, words):
    folder = copy(lm_folder, world.root / "m")
    p = folder / "config.json"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    (folder / "manifest.json").unlink()
    refused(capsys, ["generate", "--checkpoint", folder], "config.json", words)


@pytest.mark.parametrize("content,words", [("[]", "a list"), ("{", "not valid JSON")])
def test_a_malformed_hf_config_json_is_named(world, hf_folder, capsys, content, words):
    folder = copy(hf_folder, world.root / "hf")
    (folder / "config.json").write_text(content)
    refused(capsys, ["convert", "--from-hf", folder, "--out", world.root / "out"], "config.json", words)


def test_a_config_json_with_a_wrong_field_type_is_named(world, lm_folder, capsys):
    folder = copy(lm_folder, world.root / "m")
    edit_json(folder / "config.json", d_model="wide")
    (folder / "manifest.json").unlink()
    refused(capsys, ["generate", "--checkpoint", folder], "d_model", "'wide'")


@pytest.mark.parametrize("content,words", [("{", "not valid JSON"), ('{"kind": "char"}', "specials"),
                                           ('{"kind": "magic", "specials": {}}', "kind")])
def test_a_malformed_tokenizer_meta_is_named(world, lm_folder, capsys, content, words):
    folder = copy(lm_folder, world.root / "m")
    (folder / "tokenizer" / "qkv_tokenizer.json").write_text(content)
    refused(capsys, ["generate", "--checkpoint", folder], "qkv_tokenizer.json", words)
    with pytest.raises(ValueError, match="qkv_tokenizer.json"):
        Tokenizer.load(folder / "tokenizer")


def test_a_tokenizer_json_that_is_not_one_is_named(world, hf_folder, capsys):
    folder = copy(hf_folder, world.root / "hf")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": 5}')
    refused(capsys, ["generate", "--hf", folder], "tokenizer.json")


def test_an_hf_index_without_a_weight_map_is_named(world, hf_folder, capsys):
    folder = copy(hf_folder, world.root / "hf")
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    refused(capsys, ["info", "--hf", folder], "model.safetensors.index.json", "weight_map")


@pytest.mark.parametrize("what", ["missing", "file"])
def test_loaders_name_a_missing_or_wrong_kind_of_path(world, capsys, what):
    p = world.root / "nothing"
    if what == "file":
        p.write_text("x")
    for argv in (["info", "--checkpoint", p], ["info", "--hf", p], ["convert", "--from-rwkv", p, "--out",
                                                                    world.root / "o"]):
        refused(capsys, argv, str(p))
    with pytest.raises((FileNotFoundError, ValueError), match="nothing"):
        qkv.load(p)
    with pytest.raises((FileNotFoundError, ValueError), match="nothing"):
        qkv.from_hf(p)


def test_a_subprocess_run_of_the_command_shows_no_traceback(world, lm_folder):
    folder = copy(lm_folder, world.root / "m")
    flip_byte(folder / "model.safetensors")
    r = subprocess.run([__import__("sys").executable, "-m", "qkv", "generate", "--checkpoint", str(folder)],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "model.safetensors" in r.stderr


def test_an_npz_claiming_a_huge_array_is_refused_before_numpy_allocates_it(world):
    import io
    import zipfile
    import numpy as np
    from qkv.data import ArrayImages
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    path = world.root / "images.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", header.getvalue())
        z.writestr("labels.npy", header.getvalue())
    with pytest.raises(ValueError, match="images.npy.*1000000, 1000000"):
        ArrayImages(path, 8)
