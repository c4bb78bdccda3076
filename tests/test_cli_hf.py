"""``qkv generate --hf`` and ``qkv translate --hf`` print exactly what transformers' ``generate`` +
``batch_decode(skip_special_tokens=True)`` prints, with the folder's own generation settings, for folders built
here the way the hub ships them: Marian (opus-mt settings: beams, pad forbidden, EOS forced, renormalised), T5
(a "translate English to German:" prefix), mBART-50 (--src-lang / --tgt-lang), GPT-2, Llama 3 (BOS template,
llama3 RoPE) and Qwen3. Hub ids resolve through a cache folder in huggingface_hub's layout."""
import contextlib
import hashlib
import io
import os
import shutil
import warnings

import pytest
import torch

import qkv
from qkv.cli import main
from qkv.data import Tokenizer
from tests import peer_folders

pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {}, tmp_path_factory.mktemp("folders")


def folder(folders, name):
    built, root = folders
    if name not in built:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built[name] = getattr(peer_folders, f"{name}_folder")(root / name)
    return built[name]


def peer_text(path, text, seq2seq, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = transformers.AutoTokenizer.from_pretrained(path)
        cls = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
        model = cls.from_pretrained(path).eval()
        if "src_lang" in kwargs:
            tok.src_lang = kwargs.pop("src_lang")
        if "tgt_lang" in kwargs:
            kwargs["forced_bos_token_id"] = tok.convert_tokens_to_ids(kwargs.pop("tgt_lang"))
        with torch.no_grad():
            out = model.generate(**tok(text, return_tensors="pt"), **kwargs)
    return tok.batch_decode(out, skip_special_tokens=True)


PROMPTS = ["hola que tal", "Él dijo: ¿naïve?  ", "x"]


@pytest.mark.parametrize("name", ["gpt2", "llama3", "qwen3"])
def test_generate_prints_transformers_text(folders, name):
    path = folder(folders, name)
    for prompt in PROMPTS:
        rc, out, err = run(["generate", "--hf", str(path), "--prompt", prompt])
        assert rc == 0, err
        assert out == peer_text(path, prompt, False)[0] + "\n"
    # a flag overrides the folder's default, as a keyword does in transformers
    rc, out, _ = run(["generate", "--hf", str(path), "--prompt", "hola", "--max-new-tokens", "5", "--num-beams", "3"])
    assert out == peer_text(path, "hola", False, max_new_tokens=5, num_beams=3)[0] + "\n"


TEXTS = ["translate English to German: the house is small", "hola que tal, ¿bien?", "Él dijo: naïve café!"]


@pytest.mark.parametrize("name, flags, peer", [
    ("marian", [], {}), ("t5", [], {}),
    ("mbart50", ["--src-lang", "en_XX", "--tgt-lang", "es_XX"], {"src_lang": "en_XX", "tgt_lang": "es_XX"})])
def test_translate_prints_transformers_text(folders, name, flags, peer):
    path = folder(folders, name)
    outputs = set()
    for text in TEXTS:
        rc, out, err = run(["translate", "--hf", str(path), "--text", text] + flags)
        assert rc == 0, err
        assert out == peer_text(path, text, True, **peer)[0] + "\n"
        outputs.add(out)
    assert len(outputs) > 1  # the source matters: a tokenizer or encoder slip would show


def test_mbart50_target_language_is_the_first_token(folders):
    path = folder(folders, "mbart50")
    model, tok = qkv.from_hf(path), Tokenizer.load(path)
    src = torch.tensor([tok.encode("hola", add_special=True)])
    out = qkv.generate(model, src, max_new_tokens=4, forced_bos_token_id=tok.token_to_id("es_XX"))
    assert out[0, :2].tolist() == [model.config.decoder_start_token_id, tok.token_to_id("es_XX")]
    rc, _, err = run(["translate", "--hf", str(path), "--text", "x", "--tgt-lang", "xx_YY"])
    assert rc == 2 and err.count("\n") == 1 and "--tgt-lang xx_YY: not a language" in err


# -- hub ids -----------------------------------------------------------------------------------------------------

def hub_cache(cache, repo_id, source, revision="0123456789abcdef0123456789abcdef01234567"):
    """A huggingface_hub cache holding ``source``'s files as ``repo_id``: blobs named by hash, snapshot files as
    relative symlinks to them, refs/main naming the revision."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in source.iterdir():
        if f.is_file():
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            shutil.copyfile(f, repo / "blobs" / digest)
            os.symlink(os.path.join("..", "..", "blobs", digest), snapshot / f.name)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, folders):
    cache = tmp_path / "hub"
    snapshot = hub_cache(cache, "Helsinki-NLP/opus-mt-xx-yy", folder(folders, "marian"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return snapshot


def test_hub_id_resolves_through_the_cache(offline_cache, folders, tmp_path):
    repo_id, local = "Helsinki-NLP/opus-mt-xx-yy", folder(folders, "marian")
    assert (offline_cache / "config.json").is_symlink()
    model, direct = qkv.from_hf(repo_id), qkv.from_hf(local)
    ids = torch.tensor([[5, 9, 0]])
    torch.testing.assert_close(model(ids, torch.tensor([[335, 7]])), direct(ids, torch.tensor([[335, 7]])),
                               rtol=0, atol=0)
    assert Tokenizer.load(repo_id).encode("hola", add_special=True) == Tokenizer.load(local).encode("hola", True)
    text = "hola que tal, ¿bien?"
    assert run(["translate", "--hf", repo_id, "--text", text])[1] == run(["translate", "--hf", str(local),
                                                                          "--text", text])[1]
    rc, out, err = run(["convert", "--from-hf", repo_id, "--out", str(tmp_path / "converted")])
    assert rc == 0, err
    assert qkv.load(tmp_path / "converted").config.extra["hf_model_type"] == "marian"


def test_a_local_folder_wins_over_a_hub_id(offline_cache, folders, tmp_path):
    shutil.copytree(folder(folders, "t5"), tmp_path / "Helsinki-NLP" / "opus-mt-xx-yy")  # cwd is tmp_path
    assert qkv.from_hf("Helsinki-NLP/opus-mt-xx-yy").config.extra["hf_model_type"] == "t5"


def test_offline_and_not_cached_is_one_clear_line(offline_cache):
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache .* HF_HUB_OFFLINE=1"):
        qkv.from_hf("someone/not-cached")
    rc, out, err = run(["translate", "--hf", "someone/not-cached", "--text", "x"])
    assert rc == 1 and out == "" and err.count("\n") == 1 and "HF_HUB_OFFLINE=1" in err
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        qkv.from_hf("not/a/hub/id")
