"""Tokenizer folders someone else made: SentencePiece layouts (T5, Marian, mBART), a tokenizer.json and the
generation settings beside them. Links out of the folder are refused, malformed files are named, nothing crashes."""
import json
import os

import pytest

from qkv.data import Tokenizer

from .conftest import copy, refused

spm = pytest.importorskip("sentencepiece")

LINES = [f"the {w} sat on {n} mats near the {w}s" for w in ("cat", "dog", "bird", "fox") for n in range(40)]


@pytest.fixture(scope="module")
def marian_folder(tmp_path_factory):
    """A Marian-layout tokenizer folder: source.spm, target.spm and vocab.json over one SentencePiece model."""
    folder = tmp_path_factory.mktemp("spm") / "marian"
    folder.mkdir()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(LINES), model_prefix=str(folder / "m"), vocab_size=30,
                                   model_type="unigram", pad_id=-1, bos_id=-1, eos_id=0, unk_id=1)
    model = (folder / "m.model").read_bytes()
    (folder / "source.spm").write_bytes(model)
    (folder / "target.spm").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    for f in ("m.model", "m.vocab"):
        (folder / f).unlink()
    return folder


def test_the_clean_marian_folder_loads(marian_folder):
    tok = Tokenizer.load(marian_folder)
    assert tok.decode(tok.encode("the cat sat")) == "the cat sat"


@pytest.mark.parametrize("name", ["vocab.json", "source.spm", "target.spm", "tokenizer_config.json",
                                  "special_tokens_map.json"])
def test_a_tokenizer_file_linking_out_of_the_folder_is_refused(world, marian_folder, name):
    folder = copy(marian_folder, world.root / "m")
    target = world.outside / "secret.txt"
    if (folder / name).exists():
        (folder / name).unlink()
    os.symlink(target, folder / name)
    with pytest.raises(ValueError, match=f"{name}.*outside the folder"):
        Tokenizer.load(folder)


@pytest.mark.parametrize("vocab, culprit", [({"</s>": 0, "<unk>": 1, "<pad>": 99}, "ids in"),
                                            ({"</s>": 0, "<pad>": 1}, "<unk>"),
                                            ({"</s>": "zero", "<unk>": 1, "<pad>": 2}, "ids in"),
                                            ([1, 2, 3], "expected an object")])
def test_a_malformed_marian_vocab_is_named(world, marian_folder, vocab, culprit):
    folder = copy(marian_folder, world.root / "m")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="vocab.json") as e:
        Tokenizer.load(folder)
    assert culprit in str(e.value)


@pytest.mark.parametrize("name", ["source.spm", "target.spm"])
def test_a_garbage_sentencepiece_model_is_named(world, marian_folder, name):
    folder = copy(marian_folder, world.root / "m")
    (folder / name).write_bytes(b"not a model proto at all")
    with pytest.raises(ValueError, match="source.spm tokenizer folder"):
        Tokenizer.load(folder)


def test_a_tokenizer_config_that_is_not_an_object_is_named(world, marian_folder):
    folder = copy(marian_folder, world.root / "m")
    (folder / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        Tokenizer.load(folder)


def test_translate_on_a_folder_whose_vocab_links_out_is_one_line(world, marian_folder, hf_folder, capsys):
    folder = copy(hf_folder, world.root / "hf")  # a model folder with a tokenizer.json linking out
    (folder / "tokenizer.json").unlink()
    os.symlink(world.outside / "secret.txt", folder / "tokenizer.json")
    refused(capsys, ["generate", "--hf", folder, "--prompt", "the"], "tokenizer.json", "outside the folder")


def test_a_generation_config_linking_out_is_refused(world, hf_folder, capsys):
    folder = copy(hf_folder, world.root / "hf")
    os.symlink(world.outside / "secret.txt", folder / "generation_config.json")
    refused(capsys, ["generate", "--hf", folder, "--prompt", "the"], "generation_config.json", "outside the folder")
