"""qkv in Jupyter: a notebook built with nbformat and executed by nbclient on an IPython kernel produces the
explorer (translation with beam search, a decoder, a hybrid's implicit maps), the neuron view and rollout as HTML
outputs that need no network; that HTML, and the plain pages ``HTMLView.save`` writes, render in headless
Chromium with the tokens and weights the notebook computed. Skips cleanly without nbformat / nbclient / ipykernel
(the notebook) or chromium (the rendering)."""
import json
import re

import pytest
import torch

import qkv
from qkv.data import train_bpe
from qkv.interpret import neuron_view
from qkv.notebook import HTMLView, explore, importance_view, matrix_view, rollout_view

from tests.chromium import BASH, CHROMIUM, Browser

needs_chromium = pytest.mark.skipif(CHROMIUM is None or BASH is None, reason="needs chromium (apt-get install chromium)")
CORPUS = ["the cat sat on the mat", "tres mil cuatro", "el gato come"] * 3

# The notebook's cells. SETUP makes the models; each later cell ends in one view; FACTS prints what the page must
# show, computed in the kernel from the same objects.
SETUP = "%load_ext qkv.notebook" + """
import json, torch, qkv
from qkv.data import train_bpe
from qkv.explore import attention_maps
from qkv.interpret import neuron_view
from qkv.notebook import explore, rollout_view
tok = train_bpe(iter(%r), vocab_size=300, min_frequency=1, prefix_space=True)
def tiny(name):
    torch.manual_seed(0)
    cfg = dict(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    if name == "transformer-tiny":
        cfg["decoder_start_token_id"] = tok.bos_id
    return qkv.build(qkv.preset(name, **cfg)).eval()
mt, lm, hybrid, bert = tiny("transformer-tiny"), tiny("gpt2-tiny"), tiny("hybrid-tiny"), tiny("bert-tiny")
ids = torch.tensor([tok.encode("the cat sat")])
labels = [tok.decode([i]) for i in ids[0].tolist()]
""" % (CORPUS,)
CELLS = [
    SETUP,
    'explore(mt, tok, "the cat sat", num_beams=3, max_new_tokens=5)',
    'explore(lm, tok, "tres mil", num_beams=3, max_new_tokens=4)',
    'explore(hybrid, tok, "el gato", num_beams=2, max_new_tokens=3)',
    'view = neuron_view(lm, ids, kind="masked", layer=1, head=2, query=2, tokens=labels)\nview',
    'rollout_view(bert, ids, labels)',
    'attention_maps(mt, tok, "the cat", "el gato")[2]',  # a bare qkv.viz.AttentionMaps displays as the explorer
    'print(json.dumps({"weight": f"{float(view.weights[1]):.3f}", "labels": labels, '
    '"mt": explore(mt, tok, "the cat sat", num_beams=3, max_new_tokens=5).html}))',
]


@pytest.fixture(scope="module")
def executed():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    return nb


def html_of(cell):
    return [o["data"]["text/html"] for o in cell.outputs if o.get("output_type") == "execute_result"
            and "text/html" in o.get("data", {})]


def test_every_view_is_an_inline_html_output_that_needs_no_network(executed):
    outputs = [html_of(c) for c in executed.cells[1:7]]
    assert all(len(o) == 1 for o in outputs), [len(o) for o in outputs]
    for out in (o[0] for o in outputs):
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", out)  # nothing fetched from anywhere
        assert "<link" not in out and "<script src" not in out
    kinds = [re.search(r'data-qkv="(\w+)"', o[0]).group(1) for o in outputs]
    assert kinds == ["explorer", "explorer", "explorer", "neuron", "matrix", "explorer"]
    facts = json.loads(executed.cells[7].outputs[0]["text"])
    assert facts["mt"] == outputs[0][0]  # the same model and sentence give the same page: nothing random shown


def write_notebook_page(executed, path):
    """The executed notebook's HTML outputs one after another in a page, as a notebook front end shows them."""
    body = "".join(f'<div class="output">{h}</div>' for c in executed.cells for h in html_of(c))
    HTMLView(body, "executed notebook").save(path)
    return json.loads(executed.cells[7].outputs[0]["text"])


FRAMES = "Array.from(document.querySelectorAll('iframe.qkv-explorer'))"


@needs_chromium
def test_the_executed_notebook_renders_in_chromium(executed, tmp_path):
    facts = write_notebook_page(executed, tmp_path / "notebook.html")
    with Browser(tmp_path / "profile") as page:
        page.goto((tmp_path / "notebook.html").as_uri())
        page.wait_for(f"{FRAMES}.length === 4 && {FRAMES}.every(function (f) {{ return f.contentDocument && "
                      f"f.contentDocument.body && f.contentDocument.body.getAttribute('data-status') === 'ok'; }})")
        frames = page.evaluate(f"""{FRAMES}.map(function (f) {{ var d = f.contentDocument, w = f.contentWindow;
            return {{kinds: w.qkvExplorer.kinds, queries: d.getElementById('queries').textContent,
                     heat: d.getElementById('heat-title').textContent, cells: d.querySelectorAll('[data-testid=heat-cell]').length,
                     beam: !d.getElementById('beam-section').hidden, output: d.getElementById('output').textContent,
                     max: Math.max.apply(null, [].concat.apply([], w.qkvExplorer.matrix()))}}; }})""")
        mt, lm, hybrid, maps = frames
        assert mt["kinds"] == ["self", "masked", "cross"] and mt["beam"] and lm["beam"] and lm["kinds"] == ["masked"]
        assert "cat" in mt["queries"] and "sat" in mt["queries"]  # the source's tokens label the links
        steps = page.evaluate(f"{FRAMES}.map(function (f) {{ return f.contentDocument.querySelectorAll("
                              f"'#beam [data-status]').length; }})")
        assert steps[0] >= 6 and steps[1] >= 6 and steps[3] == 0  # 2K candidates a step, drawn step by step
        for f in frames:  # the heatmap's title says its largest weight, as the data holds it
            assert f"(max {f['max']:.3f})" in f["heat"] and f["cells"] > 0
        assert maps["kinds"] == ["cross"] and not maps["beam"]
        assert hybrid["kinds"] == ["masked"]  # retention's implicit maps beside attention's
        neuron = page.evaluate("document.querySelector('[data-qkv=neuron]').textContent")
        assert facts["weight"] in neuron and "score scaled_dot" in neuron and facts["labels"][2].strip() in neuron
        matrix = page.evaluate("document.querySelector('[data-qkv=matrix]').textContent")
        assert "attention rollout through 2 layers" in matrix and re.search(r"\d\.\d\d", matrix)


def tok_and(name):
    tok = train_bpe(iter(CORPUS), vocab_size=300, min_frequency=1, prefix_space=True)
    torch.manual_seed(0)
    cfg = dict(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    if name == "transformer-tiny":
        cfg["decoder_start_token_id"] = tok.bos_id
    return tok, qkv.build(qkv.preset(name, **cfg)).eval()


def test_head_importance_shows_as_a_table_of_its_numbers():
    from qkv.interpret import head_importance
    _, lm = tok_and("gpt2-tiny")
    ids = torch.tensor([[5, 17, 99, 42, 8, 61]])
    imp = head_importance(lm, lambda m: torch.nn.functional.cross_entropy(m(ids[:, :-1])[0], ids[0, 1:]))
    page = importance_view(imp).html
    assert page.count("<td") == 8 and f">{float(imp.scores[1, 3]):.3f}<" in page and "masked 1" in page


def test_views_refuse_bad_arguments_by_name():
    tok, bert = tok_and("bert-tiny")
    with pytest.raises(ValueError, match="tokens has 2 labels: expected 3"):
        rollout_view(bert, torch.tensor([[5, 6, 7]]), ["a", "b"])
    with pytest.raises(ValueError, match=r"expected \(T, S\) = \(2, 2\)"):
        matrix_view(torch.zeros(2, 3), ["a", "b"])
    with pytest.raises(ValueError, match="texts=\\[\\]"):
        explore(bert, tok, [])


@needs_chromium
def test_plain_html_exports_render_in_chromium(tmp_path):
    tok, mt = tok_and("transformer-tiny")
    view = explore(mt, tok, ["the cat sat", "tres mil"], num_beams=2, max_new_tokens=4)
    view.save(tmp_path / "explorer.html")
    _, lm = tok_and("gpt2-tiny")
    ids = torch.tensor([tok.encode("the cat sat")])
    nv = neuron_view(lm, ids, kind="masked", head=0, query=2, tokens=["<a>", "b&c", "d"])
    HTMLView(nv.to_html(), "neuron").save(tmp_path / "neuron.html")
    with Browser(tmp_path / "profile") as page:
        page.goto((tmp_path / "explorer.html").as_uri())
        frame = "document.querySelector('iframe.qkv-explorer')"
        page.wait_for(f"{frame}.contentDocument.body.getAttribute('data-status') === 'ok'")
        assert page.evaluate(f"{frame}.contentDocument.body.getAttribute('data-n-examples')") == "2"
        assert page.evaluate(f"{frame}.contentDocument.getElementById('source').textContent") == "the cat sat"
        page.goto((tmp_path / "neuron.html").as_uri())
        text = page.evaluate("document.querySelector('[data-qkv=neuron]').textContent")
        assert "<a>" in text and "b&c" in text  # token text shown as text, never parsed as HTML
        assert f"{float(nv.weights[0]):.3f}" in text and "masked attention, layer 0, head 0" in text
        rows = page.evaluate("document.querySelectorAll('[data-qkv=neuron] tr.masked').length")
        assert rows == 0  # the last query sees every key
