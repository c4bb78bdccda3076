"""``qkv convert`` round trips lose nothing: for every architecture ``qkv info --supported`` lists as in/out, a tiny
transformers model built from a config (no download) is saved with its tokenizer (or image processor), converted in
(``--from-hf``) and back out (``--checkpoint ... --to-hf``) through the command line, and transformers loads the
result with no missing or unexpected keys, every tensor of the original file equal, the same architecture, and the
tokenizer files present, byte for byte, giving the same ids. BERT's pooler (which qkv's model holds only under a
classifier) and BertForPreTraining's next-sentence head ride along in the qkv folder (``qkv.hub.carry``)."""
import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

import qkv
from qkv.cli import main
from qkv.hub import carry
from qkv.hub.hf import CONVERTERS
from tests import peer_folders as pf

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")

# one builder per exportable model type (the test below fails when an in/out architecture has none), and variants
BUILDERS = {"bert": pf.bert_folder, "gpt2": pf.gpt2_folder, "llama": pf.llama3_folder, "marian": pf.marian_folder,
            "mbart": pf.mbart50_folder, "mistral": pf.mistral_folder, "qwen3": pf.qwen3_folder, "t5": pf.t5_folder,
            "vit": pf.vit_folder}
VARIANTS = {"bert-pretraining": lambda f: pf.bert_folder(f, "BertForPreTraining"),
            "bert-classifier": lambda f: pf.bert_folder(f, "BertForSequenceClassification"),
            "mbart-25": pf.mbart_folder}
CASES = {**BUILDERS, **VARIANTS}
# the tensors no qkv weight holds, which the qkv folder keeps in hf/unmapped.safetensors; none elsewhere
UNMAPPED = {"bert": {"pooler.dense.weight", "pooler.dense.bias"},
            "bert-pretraining": {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.seq_relationship.weight",
                                 "cls.seq_relationship.bias"}}
TEXTS = ["Hola, ¿qué tal?", "la canción del niño", "  two  spaces ", "x" * 30, ""]


def test_every_in_out_architecture_has_a_builder():
    assert set(BUILDERS) == {t for t, c in CONVERTERS.items() if c.state_to_hf is not None}


def _cli(*argv):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = main(list(argv))
    return rc, out.getvalue()


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path / "model.safetensors" if path.is_dir() else path))


def _side_files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()
            if p.name in carry.TOKENIZER_FILES + carry.SETTINGS_FILES}


@pytest.fixture(scope="module", params=sorted(CASES))
def round_trip(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    src = CASES[request.param](root / "hf")
    rc_in, said = _cli("convert", "--from-hf", str(src), "--out", str(root / "qkv"))
    rc_out, said_out = _cli("convert", "--checkpoint", str(root / "qkv"), "--to-hf", "--out", str(root / "back"))
    assert rc_in == 0 and rc_out == 0, (said, said_out)
    return request.param, src, root / "qkv", root / "back", said


def test_transformers_loads_the_round_trip_with_every_key_and_tensor(round_trip):
    name, src, _, back, _ = round_trip
    arch = json.loads((src / "config.json").read_text())["architectures"]
    assert json.loads((back / "config.json").read_text())["architectures"] == arch
    cls = getattr(transformers, arch[0])
    original = cls.from_pretrained(src)
    loaded, info = cls.from_pretrained(back, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ours, theirs = original.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    read, written = _tensors(src), _tensors(back)
    assert [k for k in read if k not in written or not torch.equal(read[k], written[k])] == []


def test_the_tokenizer_and_settings_files_come_back_and_give_the_same_ids(round_trip):
    name, src, converted, back, said = round_trip
    files = _side_files(src)
    assert files, "every builder saves a tokenizer, or an image processor"
    assert _side_files(back) == files
    assert "kept:" in said and ("tokenizer" in said or "preprocessor_config.json" in said)
    if "preprocessor_config.json" in files:
        assert transformers.AutoImageProcessor.from_pretrained(back).to_dict() == \
            transformers.AutoImageProcessor.from_pretrained(src).to_dict()
        return
    peer, again = transformers.AutoTokenizer.from_pretrained(src), transformers.AutoTokenizer.from_pretrained(back)
    assert [again(t).input_ids for t in TEXTS] == [peer(t).input_ids for t in TEXTS]
    tok = qkv.data.Tokenizer.load(converted / "tokenizer")  # the qkv folder's tokenizer/ is a readable one
    assert [tok.encode(t) for t in TEXTS] == [qkv.data.Tokenizer.load(src).encode(t) for t in TEXTS]


def test_the_qkv_folder_lists_what_it_keeps_in_its_manifest(round_trip):
    name, _, converted, _, _ = round_trip
    manifest = json.loads((converted / "manifest.json").read_text())["files"]
    kept = [p.relative_to(converted).as_posix() for p in converted.rglob("*") if p.is_file()
            and p.name != "manifest.json"]
    assert sorted(manifest) == sorted(kept) and "hf/config.json" in manifest
    unmapped = converted / "hf" / carry.UNMAPPED_FILE
    found = set(_tensors(unmapped)) if unmapped.is_file() else set()
    assert found == UNMAPPED.get(name, set())


def test_a_changed_file_in_the_kept_files_is_refused(tmp_path):
    src = pf.bert_folder(tmp_path / "hf")
    assert _cli("convert", "--from-hf", str(src), "--out", str(tmp_path / "qkv"))[0] == 0
    unmapped = tmp_path / "qkv" / "hf" / carry.UNMAPPED_FILE
    unmapped.write_bytes(unmapped.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="unmapped.safetensors"):
        qkv.load(tmp_path / "qkv")


def test_a_model_whose_shape_changed_goes_out_without_the_kept_tensors(tmp_path):
    src = pf.bert_folder(tmp_path / "hf")
    model = qkv.from_hf(src)
    kept = carry.from_hf_folder(src, model)
    assert sorted(kept.unmapped) == ["pooler.dense.bias", "pooler.dense.weight"]
    assert torch.equal(kept.unmapped["pooler.dense.weight"], _tensors(src)["pooler.dense.weight"])
    grown = qkv.build(model.config.replace(n_layers=3))
    path, written = carry.write_hf(kept, grown, tmp_path / "out")
    assert not written.unmapped and written.tokenizer == kept.tokenizer
    assert "pooler.dense.weight" not in _tensors(path) and (path / "vocab.txt").is_file()


def test_hugging_face_to_hugging_face_keeps_everything_too(tmp_path):
    src = pf.bert_folder(tmp_path / "hf", "BertForPreTraining")
    assert _cli("convert", "--from-hf", str(src), "--to-hf", "--out", str(tmp_path / "out"))[0] == 0
    read, written = _tensors(src), _tensors(tmp_path / "out")
    assert read.keys() == written.keys() and all(torch.equal(read[k], written[k]) for k in read)
    assert _side_files(tmp_path / "out") == _side_files(src)


def test_qkv_to_qkv_keeps_the_tokenizer_folder_whole_and_to_hf_takes_what_transformers_reads(tmp_path):
    """A qkv run's tokenizer/ (qkv_tokenizer.json: a character vocabulary) is copied as it is by a qkv -> qkv
    conversion; --to-hf takes only Hugging Face tokenizer files, of which it has none."""
    model = qkv.build(qkv.preset("gpt2-tiny"))
    model.save(tmp_path / "run")
    tok = qkv.data.CharTokenizer.train(iter(["to be or not to be"]))
    tok.save(tmp_path / "run" / "tokenizer")
    assert _cli("convert", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "copy"))[0] == 0
    again = qkv.data.Tokenizer.load(tmp_path / "copy" / "tokenizer")
    assert again.fingerprint() == tok.fingerprint()
    rc, said = _cli("convert", "--checkpoint", str(tmp_path / "copy"), "--to-hf", "--out", str(tmp_path / "hf"))
    assert rc == 0 and "kept: nothing besides the weights" in said
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
