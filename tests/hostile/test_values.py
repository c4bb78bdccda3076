"""Values, not only formats: what a handed folder's numbers must be before qkv believes them. Weights of the kind
the architecture stores (a float tensor relabelled I32 is refused, in qkv's, Hugging Face's and RWKV's formats),
finite weights in qkv's own folders too, every config.json field type- and range-checked (qkv's and the Hugging
Face translation's), and one JSON reader for every file (a byte-order mark accepted, deep nesting refused, each
error one line naming the file)."""
import json
import re
import struct
from pathlib import Path

import pytest
import torch

import qkv
from qkv import files

from .conftest import copy, edit_json, refused, rwkv_state

ROOT = Path(__file__).resolve().parents[2]


def relabel(path: Path, name: str, dtype: str = "I32") -> None:
    """Rewrite one tensor's dtype in a safetensors header, bytes untouched (F32 and I32 have the same size)."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    assert header[name]["dtype"] == "F32"
    header[name]["dtype"] = dtype
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(n)  # same length: offsets stay valid
    assert len(raw) == n
    path.write_bytes(data[:8] + raw + data[8 + n:])


# -- weights of the kind the architecture stores -----------------------------------------------------------------

def test_a_relabelled_dtype_in_a_qkv_folder_is_refused(world, lm_folder, capsys):
    folder = copy(lm_folder, world.root / "m")
    relabel(folder / "model.safetensors", "blocks.0.ffn.w_in.weight")
    files.write_manifest(folder, ["config.json", "model.safetensors"])  # recomputed, as anyone can
    with pytest.raises(ValueError, match=r"blocks.0.ffn.w_in.weight.*I32.*float32"):
        qkv.load(folder)
    refused(capsys, ["generate", "--checkpoint", folder, "--max-new-tokens", "2"], "blocks.0.ffn.w_in.weight", "I32")


def test_a_relabelled_dtype_in_a_hugging_face_folder_is_refused(world, hf_folder, capsys):
    folder = copy(hf_folder, world.root / "hf")
    relabel(folder / "model.safetensors", "transformer.h.0.mlp.c_fc.weight")
    with pytest.raises(ValueError, match=r"blocks.0.ffn.w_in.weight.*int32.*float32"):  # qkv's name for h.0.mlp.c_fc
        qkv.from_hf(folder)
    refused(capsys, ["generate", "--hf", folder, "--prompt", "The", "--max-new-tokens", "2"], "int32")


def test_a_relabelled_dtype_in_an_rwkv_file_is_refused(world, capsys):
    state = rwkv_state()
    state["blocks.1.att.key.weight"] = state["blocks.1.att.key.weight"].view(torch.int32)  # the same bytes
    pth = world.root / "m.pth"
    torch.save(state, pth)
    with pytest.raises(ValueError, match=r"blocks.1.att.key.weight.*int32"):
        qkv.from_rwkv(pth)
    refused(capsys, ["convert", "--from-rwkv", pth, "--out", world.root / "out"], "blocks.1.att.key.weight")


def test_the_kind_check_lets_every_float_width_through():
    files.check_dtypes({"w": torch.float32, "i": torch.int64}, {"w": "BF16", "i": "I64"}, source="f")
    files.check_dtypes({"w": torch.float32}, {"w": torch.float16}, source="f")
    with pytest.raises(ValueError, match="'i' is stored as F32"):
        files.check_dtypes({"i": torch.int64}, {"i": "F32"}, source="f")


# -- qkv's own folders: finite weights ---------------------------------------------------------------------------

def _poison(folder: Path, name: str, value: float) -> None:
    from safetensors.torch import save_file
    state = files.load_safetensors(folder / "model.safetensors")
    state[name].view(-1)[3] = value
    save_file(state, str(folder / "model.safetensors"))
    files.write_manifest(folder, ["config.json", "model.safetensors"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_qkv_folder_with_non_finite_weights_is_refused(world, lm_folder, capsys, bad):
    folder = copy(lm_folder, world.root / "m")
    _poison(folder, "embed.positions.weight", bad)
    with pytest.raises(ValueError, match="embed.positions.weight.*NaN/infinite"):
        qkv.load(folder)
    refused(capsys, ["generate", "--checkpoint", folder, "--max-new-tokens", "2"], "embed.positions.weight")


def test_resuming_from_a_checkpoint_with_nan_weights_is_refused(world, lm_run, corpus, capsys):
    from .conftest import train_argv
    run = copy(lm_run, world.root / "run")
    ckpt = run / "checkpoints" / "step-0000004"
    _poison(ckpt, "blocks.0.mixer.qkv.weight", float("nan"))
    files.write_manifest(ckpt)  # every file of a checkpoint, recomputed
    refused(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"), "blocks.0.mixer.qkv.weight", "NaN")


# -- config.json values: qkv's own ------------------------------------------------------------------------------

@pytest.mark.parametrize("field,raw,shown", [
    ("family", '["decoder"]', "['decoder']"), ("vocab_size", "1e400", "inf"), ("n_layers", "-2", "-2"),
    ("d_model", "16.5", "16.5"), ("n_heads", "true", "True"), ("dropout", '"0.1"', "'0.1'"),
    ("prenorm", '"yes"', "'yes'"), ("eos_token_id", "-1", "-1"), ("norm_eps", "NaN", "nan"),
    ("attn_softcap", "Infinity", "inf"), ("extra", "[]", "[]")])
def test_a_qkv_config_value_of_the_wrong_type_or_range_is_one_line(world, lm_folder, capsys, field, raw, shown):
    folder = copy(lm_folder, world.root / "m")
    text = (folder / "config.json").read_text()
    text = re.sub(rf'"{field}": [^,\n]+', f'"{field}": {raw}', text)
    assert f'"{field}": {raw}' in text
    (folder / "config.json").write_text(text)
    (folder / "manifest.json").unlink()
    with pytest.raises(ValueError, match=rf"config.json: {field} must be .*, got {re.escape(shown)}"):
        qkv.load(folder)
    refused(capsys, ["info", "--checkpoint", folder], "config.json", field, shown)


# -- config.json values: a Hugging Face folder's, before the translation runs -----------------------------------

@pytest.mark.parametrize("field,raw,shown", [
    ("model_type", '["gpt2"]', "['gpt2']"), ("vocab_size", "1e400", "inf"), ("n_layer", "-1", "-1"),
    ("n_embd", "true", "True"), ("n_head", "2.0", "2.0"), ("layer_norm_epsilon", '"1e-5"', "'1e-5'"),
    ("tie_word_embeddings", '"no"', "'no'"), ("eos_token_id", "-5", "-5"), ("n_positions", "0", "0"),
    ("activation_function", "7", "7")])
def test_a_hugging_face_config_value_of_the_wrong_type_or_range_is_one_line(world, hf_folder, capsys, field, raw,
                                                                            shown):
    folder = copy(hf_folder, world.root / "hf")
    config = json.loads((folder / "config.json").read_text())
    config[field] = "@@"
    (folder / "config.json").write_text(json.dumps(config).replace('"@@"', raw))
    with pytest.raises(ValueError, match=rf"config.json: {field} must be .*, got {re.escape(shown)}"):
        qkv.from_hf(folder)
    refused(capsys, ["info", "--hf", folder], "config.json", field, shown)


def test_nested_rope_parameters_are_checked_too(tmp_path):
    from qkv.hub.hf_fields import check_hf_fields
    check_hf_fields({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, source="c")
    with pytest.raises(ValueError, match=r"c: rope_parameters.factor must be a finite number > 0, got inf"):
        check_hf_fields({"rope_parameters": {"rope_type": "linear", "factor": float("inf")}}, source="c")
    with pytest.raises(ValueError, match=r"rope_parameters.sliding_attention.rope_theta must be .*, got '1'"):
        check_hf_fields({"rope_parameters": {"full_attention": {"rope_theta": 1e6},
                                             "sliding_attention": {"rope_theta": "1"}}}, source="c")


def test_every_field_a_translation_reads_is_checked():
    """Each converter run on transformers' own config of its type: every field it reads is in the table of checked
    fields, and transformers' defaults pass the checks."""
    transformers = pytest.importorskip("transformers")
    from qkv.hub.hf import CONVERTERS
    from qkv.hub.hf_fields import FIELDS, check_hf_fields

    class Reads(dict):
        def __init__(self, d):
            super().__init__(d)
            self.read = set()

        def get(self, key, default=None):
            self.read.add(key)
            return super().get(key, default)

        def __getitem__(self, key):
            self.read.add(key)
            return super().__getitem__(key)

    unchecked = {}
    for model_type, conv in CONVERTERS.items():
        hf = transformers.AutoConfig.for_model(model_type).to_dict()
        check_hf_fields(hf, source=model_type)
        reads = Reads(hf)
        conv.config_from_hf(reads)
        unchecked.update({model_type: sorted(reads.read - set(FIELDS))} if reads.read - set(FIELDS) else {})
    assert not unchecked, f"fields read but not checked: {unchecked}"


# -- one JSON reader --------------------------------------------------------------------------------------------

def test_a_byte_order_mark_is_accepted_by_every_reader(world, lm_folder, hf_folder, capsys):
    bom = b"\xef\xbb\xbf"
    folder = copy(lm_folder, world.root / "m")
    (folder / "config.json").write_bytes(bom + (folder / "config.json").read_bytes())
    (folder / "manifest.json").unlink()
    assert qkv.load(folder).config.family == "decoder"
    hf = copy(hf_folder, world.root / "hf")
    (hf / "config.json").write_bytes(bom + (hf / "config.json").read_bytes())
    assert qkv.from_hf(hf).config.family == "decoder"
    from qkv.cli import main
    rc = main(["generate", "--hf", str(hf), "--prompt", "The", "--max-new-tokens", "2"])
    assert rc == 0, capsys.readouterr().err


@pytest.mark.parametrize("where", ["qkv config", "hf config", "index", "manifest"])
def test_deeply_nested_json_is_one_line_naming_the_file(world, lm_folder, hf_folder, capsys, where):
    deep = "[" * 100_000 + "]" * 100_000
    if where == "qkv config":
        folder = copy(lm_folder, world.root / "m")
        (folder / "manifest.json").unlink()
        (folder / "config.json").write_text(deep)
        argv, name, load = ["generate", "--checkpoint", folder], "config.json", lambda: qkv.load(folder)
    elif where == "manifest":
        folder = copy(lm_folder, world.root / "m")
        (folder / "manifest.json").write_text(deep)
        argv, name, load = ["generate", "--checkpoint", folder], "manifest.json", lambda: qkv.load(folder)
    else:
        folder = copy(hf_folder, world.root / "hf")
        name = "config.json"
        if where == "index":
            (folder / "model.safetensors.index.json").write_text(deep)
            name = "model.safetensors.index.json"
        else:
            (folder / "config.json").write_text(deep)
        argv, load = ["convert", "--from-hf", folder, "--out", world.root / "out"], lambda: qkv.from_hf(folder)
    with pytest.raises(ValueError, match=rf"{re.escape(name)}.*nested more than 64 levels"):
        load()
    refused(capsys, argv, name, "nested")


def test_the_reader_decides_bom_size_depth_and_type_once(tmp_path):
    assert files.loads(b"\xef\xbb\xbf{\"a\": 1}", what="x") == {"a": 1}
    assert files.loads("\ufeff[1]", what="x") == [1]
    assert files.loads("[" * 64 + "]" * 64, what="x") is not None
    with pytest.raises(ValueError, match="^x: objects and lists nested more than 64 levels"):
        files.loads("[" * 65 + "]" * 65, what="x")
    with pytest.raises(ValueError, match=r"^body: byte 0xff at offset 1 is not valid UTF-8"):
        files.loads(b"[\xff]", what="body")
    with pytest.raises(ValueError, match=r"^x: not valid JSON \(Expecting value at line 1, column 2\)"):
        files.loads("[", what="x")
    with pytest.raises(ValueError, match="holds a list; expected an object"):
        files.loads("[]", what="x", expect=dict)
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 600 + "0]")
    with pytest.raises(ValueError, match=r"big.json: 1203 bytes, more than the 1000"):
        files.read_json(big, expect=list, max_bytes=1000)


# Reads of JSON text outside qkv/files, each with its reason (a ratchet: never more; route new ones through
# qkv.files.read_json / loads).
JSON_READS = {
    "qkv/checkpoint.py": 3,  # the run lock's owner record; config_diff's normalisation of two dicts in memory
    "qkv/train/checkpointing.py": 1,  # normalises a config in memory (json.loads(json.dumps(...)))
    "qkv/train/log.py": 1,  # metrics.jsonl repair: a line cut by a crash is dropped, not an error
    "qkv/data/parallel.py": 1,  # .jsonl data lines (the data helper's)
    "qkv/viz.py": 1, "qkv/demo.py": 3,  # metrics lines, the demo's files
    "qkv/explore_server.py": 1,  # HTTP bodies: nesting measured by a scan first, answers are the page's own 400s
}


def test_json_is_read_through_the_one_reader():
    found = {}
    for f in sorted((ROOT / "qkv").rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        if rel.startswith("qkv/files/"):
            continue
        n = len(re.findall(r"\bjson\.loads?\(", f.read_text(encoding="utf-8")))
        if n > JSON_READS.get(rel, 0):
            found[rel] = n
    assert not found, f"JSON read outside qkv.files (use qkv.files.read_json or loads): {found}"
