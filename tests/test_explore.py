"""qkv explore: any sentence through any text model (output, every layer's and head's attention, the beam search
step by step), served on loopback; bad input is answered, never a crash; and the page, driven in a real
headless Chromium, shows what the model computed (skipped without chromium)."""
import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
import torch

import qkv
from qkv.data import CharTokenizer, train_bpe
from qkv.decoding import generate
from qkv.explore import Explorer, ExploreInputError, token_labels
from qkv.explore_server import make_server
from qkv.viz import explorer_html, visible_token

from tests.chromium import BASH, CHROMIUM, Browser

CORPUS = ["él compró veintidós árboles", "¿qué? ¡sí!", "the cat sat on the mat", "tres mil cuatro"] * 3


def tiny(name, tok, **kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    if name in ("transformer-tiny", "t5-tiny"):
        cfg["decoder_start_token_id"] = tok.bos_id
    return qkv.build(qkv.preset(name, **cfg, **kw)).eval()


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(iter(CORPUS), vocab_size=300, min_frequency=1, prefix_space=True)


def test_token_labels_give_each_tokens_text_and_complete_characters_once(bpe):
    ids = bpe.encode("él compró árboles")
    labels = token_labels(bpe, [bpe.bos_id] + ids + [bpe.eos_id])
    assert labels[0] == "<s>" and labels[-1] == "</s>"
    assert "".join(labels[1:-1]) == "él compró árboles"  # every character once, on the token completing it
    raw = train_bpe(iter(["x"]), vocab_size=300)  # no merges: "é" is two byte tokens
    assert token_labels(raw, raw.encode("é")) == ["", "é"]


def test_a_translation_example_is_beam_searchs_output_with_three_kinds_of_attention(bpe):
    model = tiny("transformer-tiny", bpe)
    ex = Explorer(model, bpe, num_beams=3, max_new_tokens=6).example("él compró árboles")
    src = bpe.encode("él compró árboles") + [bpe.eos_id]
    out = generate(model, torch.tensor([src]), num_beams=3, max_new_tokens=6, eos_token_id=bpe.eos_id,
                   pad_token_id=bpe.pad_id)[0, 1:].tolist()
    out = [t for t in out[: out.index(bpe.eos_id)] if t != bpe.eos_id] if bpe.eos_id in out else out
    assert ex["output"] == bpe.decode(out)
    assert [k["kind"] for k in ex["kinds"]] == ["self", "masked", "cross"]
    self_, masked, cross = ex["kinds"]
    assert self_["queries"] == token_labels(bpe, src) and self_["queries"][-1] == "</s>"
    assert masked["queries"][0] == "<s>" and cross["keys"] == self_["queries"]
    for k in ex["kinds"]:  # layers x heads x T x S, rows summing to 1
        assert len(k["layers"]) == 2 and len(k["layers"][0]) == 4
        w = torch.tensor(k["layers"][1])
        assert w.shape[1:] == (len(k["queries"]), len(k["keys"]))
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:2]), atol=1e-3, rtol=0)
    beam = ex["beam"]
    assert beam["k"] == 3 and beam["final"][0]["text"] == ex["output"]
    assert all(len(s["tokens"]) == 6 for s in beam["steps"])  # 2K candidates a step
    f = beam["final"][0]
    assert f["score"] == pytest.approx(f["logprob"] / f["length"], rel=1e-5)
    assert beam["greedy"]["text"] == ex["greedy"]
    json.dumps(ex, allow_nan=False)  # the page's data is plain JSON


@pytest.mark.parametrize("name", ["gpt2-tiny", "hybrid-tiny", "linear-tiny", "bert-tiny", "t5-tiny"])
def test_every_text_family_explores_with_a_map_for_every_layer(name, bpe):
    model = tiny(name, bpe)
    ex = Explorer(model, bpe, max_new_tokens=4).example("tres mil cuatro")
    if name == "bert-tiny":
        assert ex["output"] is None and ex["beam"] is None and [k["kind"] for k in ex["kinds"]] == ["self"]
        return
    assert isinstance(ex["output"], str) and len(ex["beam"]["steps"]) <= 4
    # linear-time layers give their implicit maps too (retention between attention layers in the hybrid)
    assert ex["kinds"] and all(w is not None for k in ex["kinds"] for w in k["layers"])
    n = len(ex["kinds"][0]["queries"])
    assert all(torch.tensor(w).shape[1:] == (n, n) for w in ex["kinds"][0]["layers"])


def test_bad_input_is_refused_with_a_reason(bpe):
    explorer = Explorer(tiny("transformer-tiny", bpe, max_positions=16), bpe, max_chars=40)
    for text, reason in (("", "empty"), ("   \n", "empty"), ("x" * 41, "41 characters"),
                         ("él " * 13, "tokens"), (None, "expected a sentence")):
        with pytest.raises(ExploreInputError, match=reason):
            explorer.example(text)
    chars = CharTokenizer.train(iter(CORPUS))  # has an unknown token: unseen characters are read as it
    ex = Explorer(tiny("transformer-tiny", chars), chars, max_new_tokens=3).example("el ж gato")
    assert "'ж' (U+0436)" in ex["warning"] and "<unk>" in ex["warning"]
    bare = CharTokenizer.train(iter(CORPUS), specials=["pad", "bos", "eos"])  # none: the text cannot be read
    with pytest.raises(ExploreInputError, match="U\\+0436"):
        Explorer(tiny("transformer-tiny", bare), bare).example("ж")
    with pytest.raises(ValueError, match="num_beams"):
        Explorer(tiny("transformer-tiny", bpe), bpe, num_beams=1)
    with pytest.raises(ValueError, match="family 'vit'"):
        Explorer(qkv.build(qkv.preset("vit-tiny")), bpe)


def test_a_hugging_face_folder_explores_with_its_tokenizer_json(tmp_path, bpe):
    """--hf DIR: any model qkv loads, read with the tokenizer.json beside it (a GPT-2 made by transformers)."""
    transformers = pytest.importorskip("transformers")
    import argparse
    from qkv.cli.loading import model_and_tokenizer
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=bpe.vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=bpe.bos_id, eos_token_id=bpe.eos_id)
    config._attn_implementation = "eager"  # the weights only the eager path returns
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path)
    bpe.hf.save(str(tmp_path / "tokenizer.json"))
    model, tok = model_and_tokenizer(argparse.Namespace(hf=str(tmp_path), checkpoint=None))
    ex = Explorer(model, tok, max_new_tokens=5).example("tres mil")
    assert ex["kinds"][0]["kind"] == "masked" and len(ex["kinds"][0]["layers"]) == 2
    with torch.no_grad():
        ids = torch.tensor([tok.encode("tres mil")])
        ours = model(ids, return_weights=True)[1][1].self_attn[0, 0]
        theirs = hf(ids, output_attentions=True).attentions[1][0, 0]
    labels = ex["kinds"][0]["queries"]
    got = torch.tensor(ex["kinds"][0]["layers"][1][0])[: ids.shape[1], : ids.shape[1]]
    torch.testing.assert_close(got, theirs.float(), atol=1e-4, rtol=0)  # the page shows transformers' weights
    torch.testing.assert_close(ours.float(), theirs.float(), atol=1e-5, rtol=0)
    assert "".join(labels[: ids.shape[1]]) == "tres mil"


def _captioner(name, **overrides):
    """A tiny image-to-text model of preset ``name`` over 32 x 32 scenes (8 x 8 cells) and a BPE of their captions."""
    from qkv.data import shapes
    tok = train_bpe(iter([s.caption for s in shapes.make_scenes(40, seed=1, size=32)]), vocab_size=300,
                    min_frequency=1, prefix_space=True)
    torch.manual_seed(0)
    fields = dict(d_model=32, image_size=32, max_positions=3 * 32 * 32, vocab_size=tok.vocab_size,
                  pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                  decoder_start_token_id=tok.bos_id)
    return qkv.build(qkv.preset(name, **{**fields, **overrides})).eval(), tok


@pytest.mark.parametrize("name", ["sat-soft", "sat-hard-gumbel", "caption-transformer"])
def test_an_image_model_explores_each_words_attention_over_the_image(name):
    """The registry's record (reads pixels, decodes text) gives the "describe" view: a generated scene's caption by
    beam search, each written word's weights over the 8 x 8 cells (the model's own), the paper's figure inline."""
    import base64
    from qkv.viz_image import scene_pixels
    model, tok = _captioner(name)
    explorer = Explorer(model, tok, num_beams=2, max_new_tokens=5)
    assert explorer.task == "describe"
    ex = explorer.example("7")
    pixels = scene_pixels(model.config, 7)
    out = generate(model, pixels.long().flatten()[None], num_beams=2, max_new_tokens=5, eos_token_id=tok.eos_id,
                   pad_token_id=tok.pad_id)[0, 1:].tolist()
    body = [t for t in (out[: out.index(tok.eos_id)] if tok.eos_id in out else out) if t != tok.pad_id]
    assert ex["output"] == tok.decode(body) and ex["source"] == "generated scene 7"
    (cross,) = ex["kinds"]
    assert cross["kind"] == "cross" and len(cross["keys"]) == 64 and cross["keys"][9] == "1,1"
    assert cross["queries"] == token_labels(tok, body + [tok.eos_id])  # each step labelled with the word it wrote
    with torch.no_grad():
        _, w = model(pixels[None], torch.tensor([[tok.bos_id] + body]), return_weights=True)
    expected = w.cross[-1][0] if w.cross else w.weights  # (H, T, 64) the last layer, or the LSTM's one attention
    got = torch.tensor(cross["layers"][-1])
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=0)
    if name == "sat-hard-gumbel":  # a hard pick: one cell per word, the argmax of alpha at evaluation
        assert ((got == 0) | (got == 1)).all() and (got.sum(-1) == 1).all()
    png = base64.b64decode(ex["image"]["figure"].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and ex["image"]["grid"] == [8, 8]
    assert ex["beam"]["greedy"]["text"] == ex["greedy"]
    json.dumps(ex, allow_nan=False)
    if name == "sat-soft":  # in a notebook too: the same example inline, the figure as a data: URI
        from qkv.notebook import explore
        assert ex["image"]["figure"] in explore(model, tok, "7", num_beams=2, max_new_tokens=5)._repr_html_()
    for text in ("", "abc", "-1", str(2 ** 32), "٣", None):  # a scene's number or one line saying so
        with pytest.raises(ExploreInputError, match="type its number, 0 to 4294967295"):
            explorer.example(text)


# -- the server -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served():
    chars = CharTokenizer.train(iter(CORPUS))
    explorer = Explorer(tiny("transformer-tiny", chars, max_positions=64), chars, max_new_tokens=8, max_chars=60)
    server = make_server(explorer, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    TOKENS[server.server_address[1]] = server.token
    yield explorer, server.server_address[1]
    server.shutdown()
    server.server_close()


TOKENS = {}  # port -> the token its page carries, which the page's own requests echo


def request(port, path="/", body=None, host=None, raw=None, headers=()):
    """A request as the page makes it (a POST: JSON, with the server's token), headers overriding."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST" if data else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/json")
        req.add_header("X-Qkv-Token", TOKENS.get(port, ""))
    if host:
        req.add_header("Host", host)
    for k, v in headers:
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_server_answers_sentences_and_refuses_bad_requests_in_json(served):
    explorer, port = served
    status, page = request(port)
    assert status == 200 and '"live":true' in page and "http" not in page.split("<script", 1)[1].split("fetch(")[0]
    status, body = request(port, "/api/explore", {"text": "el gato"})
    assert status == 200 and json.loads(body)["example"]["output"] == explorer.example("el gato")["output"]
    for payload, reason in (({"text": ""}, "empty"), ({"text": "x" * 61}, "61 characters"), ({"txt": "a"}, "JSON"),
                            ({"text": 3}, "expected a sentence")):
        status, body = request(port, "/api/explore", payload)
        assert status == 400 and reason in json.loads(body)["error"], payload
    assert request(port, "/api/explore", raw=b"\xff{not json")[0] == 400
    assert request(port, "/nowhere", {"text": "a"})[0] == 404 and request(port, "/nowhere")[0] == 404
    assert request(port, host="evil.example:80")[0] == 403  # DNS rebinding: only loopback names are served
    assert request(port, "/api/explore", raw=b"{}", headers=[("Content-Length", str(10**9))])[0] == 413
    assert request(port, "/api/explore", {"text": "el gato ж"})[0] == 200  # still serving after all that


def test_a_taken_port_is_one_clear_error(served, capsys):
    _, port = served
    with pytest.raises(ValueError, match=f"port {port} on 127.0.0.1 is already in use.*--port 0"):
        make_server(served[0], port=port)
    from qkv.cli import main
    assert main(["explore", "--hf", "/nonexistent-folder"]) != 0  # no traceback either way
    assert "Traceback" not in capsys.readouterr().err


def test_the_explore_command_refuses_a_taken_port_in_one_line(served, tmp_path, capsys):
    from qkv.cli import main
    explorer, port = served
    explorer.model.save(tmp_path / "m")
    explorer.tokenizer.save(tmp_path / "m" / "tokenizer")
    assert main(["explore", "--checkpoint", str(tmp_path / "m"), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("qkv explore: error:") and "already in use" in err
    assert main(["explore", "--checkpoint", str(tmp_path / "m"), "--port", "0", "--text", ""]) == 2
    assert "--text ''" in capsys.readouterr().err


# -- in a real browser ------------------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(CHROMIUM is None or BASH is None,
                                    reason="chromium (and bash) not installed (apt-get install -y chromium)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_chromium
def test_in_chromium_type_a_sentence_submit_and_read_output_attention_and_beam(served, tmp_path):
    explorer, port = served
    text = "the cat compró tres"
    expected = explorer.example(text)
    with Browser(tmp_path / "profile") as page:
        page.goto(f"http://127.0.0.1:{port}/")
        assert page.evaluate("document.body.getAttribute('data-status')") == "ok"
        page.type("[data-testid=input-text]", text)
        page.press_enter()
        page.wait_for(f"document.getElementById('source').textContent === {json.dumps(text)} && "
                      "document.body.getAttribute('data-busy') === 'false'")
        assert page.evaluate("document.body.getAttribute('data-n-examples')") == "1"  # the first view gave way
        got = page.evaluate("""(function () {
            var b = document.body, q = function (s) { return Array.from(document.querySelectorAll(s)); };
            return { status: b.getAttribute('data-status'), output: document.getElementById('output').textContent,
                     source: document.getElementById('source').textContent, kind: b.getAttribute('data-kind'),
                     queries: q('[data-testid=token-query]').map(function (e) { return e.textContent; }),
                     keys: q('[data-testid=token-key]').map(function (e) { return e.textContent; }),
                     cells: q('[data-testid=heat-cell]').length, lines: +b.getAttribute('data-n-lines'),
                     steps: q('[data-testid=beam-step]').length, cands: q('[data-testid=beam-cand]').length,
                     finals: q('[data-testid=beam-final] td.text').map(function (e) { return e.textContent; }),
                     message: document.getElementById('message').textContent,
                     weights: window.qkvExplorer.matrix() };
        })()""")
        assert got["status"] == "ok" and got["message"] == ""
        assert got["source"] == text and got["output"].split("  (")[0] == expected["output"]
        first = expected["kinds"][0]
        assert got["kind"] == first["kind"] == "self"
        # the tokens as drawn: a space token as "␣", the same rule as the PNG labels' (qkv.viz.visible_token)
        assert got["queries"] == [visible_token(t) for t in first["queries"]] and "␣" in got["queries"]
        assert got["keys"] == [visible_token(t) for t in first["keys"]]
        assert got["cells"] == len(first["queries"]) * len(first["keys"])
        assert got["weights"] == first["layers"][0][0]  # layer 0, head 0: the very numbers the model computed
        assert got["steps"] == len(expected["beam"]["steps"]) and got["cands"] == 2 * 4 * got["steps"]
        assert got["finals"] == [f["text"] for f in expected["beam"]["final"]]
        # cross-attention, last layer, mean of heads: a real click on the buttons
        page.click("[data-testid=kind-option]:nth-of-type(3)")
        page.wait_for("document.body.getAttribute('data-kind') === 'cross'")
        assert page.evaluate("document.querySelectorAll('[data-testid=heat-cell]').length") == \
            len(expected["kinds"][2]["queries"]) * len(expected["kinds"][2]["keys"])
        # bad input is said in the page, and the page still works
        page.type("[data-testid=input-text]", "   ")
        page.press_enter()
        page.wait_for("document.body.getAttribute('data-message') === 'error'")
        assert "empty" in page.evaluate("document.getElementById('message').textContent")
        page.type("[data-testid=input-text]", "el ж")
        page.press_enter()
        page.wait_for("document.getElementById('source').textContent === 'el ж' && "
                      "document.body.getAttribute('data-busy') === 'false'")
        assert page.evaluate("document.body.getAttribute('data-n-examples')") == "2"
        assert "U+0436" in page.evaluate("document.getElementById('warning').textContent")  # under the output
        assert page.evaluate("document.getElementById('message').textContent") == ""
        assert page.evaluate("document.body.getAttribute('data-status')") == "ok"
        assert not [m for m in page.console if m.startswith("Uncaught")], page.console


@needs_chromium
def test_in_chromium_the_static_page_switches_examples_and_shows_layers_without_maps(tmp_path, bpe):
    hybrid = Explorer(tiny("hybrid-tiny", bpe), bpe, max_new_tokens=4)
    seq2seq = Explorer(tiny("transformer-tiny", bpe), bpe, max_new_tokens=4)
    examples = [seq2seq.example("él compró árboles", label="first"), hybrid.example("tres mil", label="second")]
    examples[1]["kinds"][0]["layers"][0] = None  # a layer without a map (a mixer that forms none) is said as such
    examples[0]["warning"] = None
    examples[1]["warning"] = "The continuation ran to the length limit (4 tokens) repeating 'a' 4 times."
    path = explorer_html(examples, tmp_path / "e.html", title="two examples")
    with Browser(tmp_path / "profile") as page:
        page.goto(path.resolve().as_uri())
        assert page.evaluate("document.body.getAttribute('data-n-examples')") == "2"
        assert page.evaluate("document.getElementById('ask-panel').hidden") is True  # static: no server to ask
        assert page.evaluate("document.getElementById('warning').hidden") is True  # the first has none
        page.click("[data-testid=example-option]:nth-of-type(2)")  # the second button
        page.wait_for("document.body.getAttribute('data-example') === '1'")
        assert page.evaluate("document.getElementById('warning').hidden") is False  # a static page says it too
        assert "repeating 'a' 4 times" in page.evaluate("document.getElementById('warning').textContent")
        assert page.evaluate("document.body.getAttribute('data-has-map')") == "false"  # layer 0: retention
        assert "no attention map" in page.evaluate("document.getElementById('heat').textContent")
        page.click("[data-testid=layer-option]:nth-of-type(2)")
        page.wait_for("document.body.getAttribute('data-layer') === '1'")
        assert page.evaluate("document.body.getAttribute('data-has-map')") == "true"
        assert page.evaluate("document.querySelectorAll('[data-testid=beam-step]').length") == \
            len(examples[1]["beam"]["steps"])
        assert not [m for m in page.console if m.startswith("Uncaught")], page.console


@needs_chromium
def test_in_chromium_an_image_model_shows_each_word_over_the_image(tmp_path):
    """Served (its Content-Security-Policy must let the inline PNG through): type a scene's number, see the figure
    decoded, the words x cells map of the model's own numbers; a sentence instead is said in the page."""
    model, tok = _captioner("sat-soft")
    explorer = Explorer(model, tok, num_beams=2, max_new_tokens=4)
    expected = explorer.example("3")
    server = make_server(explorer, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Browser(tmp_path / "profile") as page:
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            assert page.evaluate("document.getElementById('text').placeholder").startswith("type a scene number")
            page.type("[data-testid=input-text]", "3")
            page.press_enter()
            page.wait_for("document.getElementById('source').textContent === 'generated scene 3' && "
                          "document.body.getAttribute('data-busy') === 'false'")
            page.wait_for("document.getElementById('image-figure').complete && "
                          "document.getElementById('image-figure').naturalWidth > 0")
            assert page.evaluate("document.getElementById('image-figure').hidden") is False
            assert page.evaluate("document.body.getAttribute('data-kind')") == "cross"
            assert page.evaluate("document.querySelectorAll('[data-testid=heat-cell]').length") == \
                len(expected["kinds"][0]["queries"]) * 64
            assert page.evaluate("window.qkvExplorer.matrix()") == expected["kinds"][0]["layers"][0][0]
            page.type("[data-testid=input-text]", "un gato")
            page.press_enter()
            page.wait_for("document.body.getAttribute('data-message') === 'error'")
            assert "type its number" in page.evaluate("document.getElementById('message').textContent")
            assert not [m for m in page.console if m.startswith("Uncaught") or "Content Security" in m], page.console
    finally:
        server.shutdown()
        server.server_close()
