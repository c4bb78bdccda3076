"""One registry: every family, position kind, mixer and Hugging Face architecture has exactly one record, and what
the layers above ask a record (which commands fit, what the explorer does) follows from its fields."""
import pytest

import qkv
from qkv.config import FAMILIES as FAMILY_NAMES
from qkv.config import MIXERS, POSITIONS
from qkv.models import FAMILIES, decoding_of, family_of
from qkv.models.mixers import MIXER_KINDS
from qkv.models.positions import POSITION_KINDS


def test_each_name_list_has_exactly_one_table():
    assert list(FAMILIES) == list(FAMILY_NAMES)
    assert set(MIXER_KINDS) == set(MIXERS)
    assert set(POSITION_KINDS) == set(POSITIONS)


@pytest.mark.parametrize("preset, continues, has_source, text", [
    ("gpt2-tiny", True, False, True), ("transformer-tiny", False, True, True), ("bert-tiny", False, False, True),
    ("vit-tiny", False, False, False)])
def test_record_says_what_a_family_does(preset, continues, has_source, text):
    config = qkv.preset(preset)
    record = family_of(config)
    assert (record.continues, record.has_source, record.text) == (continues, has_source, text)
    assert isinstance(qkv.build(config), record.model)
    assert set(record.layer_counts(config)) == set(record.stacks)
    if continues or has_source:
        assert decoding_of(qkv.build(config)).has_source == has_source
    else:
        with pytest.raises(ValueError, match="generates no tokens"):
            decoding_of(qkv.build(config))


def test_explorer_view_follows_the_record():
    from qkv.explore import view_of
    assert [view_of(qkv.build(qkv.preset(p))).name for p in ("transformer-tiny", "gpt2-tiny", "bert-tiny", "sat-soft")] \
        == ["translate", "generate", "encode", "describe"]
    with pytest.raises(ValueError, match="'vit' writes no text to explore"):
        view_of(qkv.build(qkv.preset("vit-tiny")))


def test_every_converter_names_a_family_and_llama_likes_have_their_facts():
    from qkv.hub import hf_decoder
    from qkv.hub.hf import CONVERTERS
    assert {c.family for c in CONVERTERS.values()} <= set(FAMILIES)
    llama_like = {t for t, c in CONVERTERS.items() if c.config_from_hf in (hf_decoder._llama_config,
                                                                            hf_decoder._gemma_config)}
    assert llama_like == set(hf_decoder.LLAMA_LIKE)


def test_every_family_task_is_a_task_the_trainer_knows():
    from qkv.tasks import TASKS, task_for
    for name, record in FAMILIES.items():
        assert record.tasks, name
        assert set(record.tasks) <= set(TASKS), (name, record.tasks)
        assert task_for(name).name == record.tasks[0]
