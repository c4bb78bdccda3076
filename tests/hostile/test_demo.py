"""`qkv demo --out DIR` guards its folder as `qkv train` does: a folder holding anything but a demo's own run is
refused untouched (unless --overwrite, which removes only what the demo writes); links where it writes are refused;
one demo at a time; a full disk is one line naming the file and what to do; and the live explorer of a demo's
folder opens with the demo's examples."""
import errno
import json

import pytest

import qkv.data
import qkv.viz
from qkv.checkpoint import RunLock
from qkv.cli import main
from qkv.demo_folder import DEMO_FILES, MARKER, check_demo_folder, is_demo_folder, saved_examples, writing

from tests.hostile.conftest import copy, refused, snapshot

TINY = ["--max-steps", "2"]


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_folder_with_the_users_files_is_refused_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "data" / "train.en").write_text("my own sentences\n")
    (out / "results.json").write_text('{"my": "results"}\n')
    before = snapshot(out)
    line = refused(capsys, ["demo", "--out", out, *TINY], str(out), "data", "results.json", "--overwrite")
    assert "did not write" in line
    assert snapshot(out) == before  # not a byte written, no lock or marker left behind


def test_a_folder_with_any_other_content_is_refused_and_a_file_is_no_folder(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x\n")
    refused(capsys, ["demo", "--out", tmp_path / "notes", *TINY], "todo.txt")
    (tmp_path / "f").write_text("x\n")
    refused(capsys, ["demo", "--out", tmp_path / "f", *TINY], "a file, expected a folder")


def test_overwrite_removes_only_what_the_demo_writes(tmp_path):
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "data" / "train.en").write_text("mine\n")
    (out / "explorer.html").write_text("old page\n")
    (out / "notes.txt").write_text("keep me\n")
    said = []
    assert check_demo_folder(out, overwrite=True, echo=said.append) is False
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and "data, explorer.html" in said[0]


def test_a_link_where_the_demo_writes_is_refused_even_with_overwrite(tmp_path, world, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "data").symlink_to(world.outside / "sub", target_is_directory=True)
    refused(capsys, ["demo", "--out", out, "--overwrite", *TINY], "symbolic link", "data")
    assert (world.outside / "sub" / "notes.txt").is_file()  # the world fixture checks every byte too


def test_a_demo_folder_of_its_own_is_recognised_new_and_old(tmp_path):
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / MARKER).write_text("{}\n")
    (marked / "notes.txt").write_text("the user's own, beside the demo's\n")
    assert is_demo_folder(marked) and check_demo_folder(marked) is True
    old = tmp_path / "old"  # a finished demo from before the marker: only the demo's files, its results.json
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"exact_greedy": 1.0, "tokenizer_settings": {}}))
    assert is_demo_folder(old)
    interrupted = tmp_path / "interrupted"  # from before the marker, stopped during training
    (interrupted / "train").mkdir(parents=True)
    (interrupted / "train" / "train_config.json").write_text(json.dumps({"out_dir": str(interrupted / "train")}))
    assert is_demo_folder(interrupted)
    (interrupted / "train" / "train_config.json").write_text(json.dumps({"out_dir": str(tmp_path / "else")}))
    assert not is_demo_folder(interrupted)  # a run made for another folder is not the demo's
    (old / "mine.txt").write_text("x\n")
    assert not is_demo_folder(old)  # the demo's names and more, without the marker: not the demo's own
    assert set(DEMO_FILES) >= {"data", "train", "results.json", "explorer.html", MARKER}


def test_a_second_demo_into_a_folder_in_use_is_refused_naming_out_and_clears_nothing(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / MARKER).write_text("{}\n")
    (out / "explorer.html").write_text("the running demo's\n")
    with RunLock(out):
        line = refused(capsys, ["demo", "--out", out, "--overwrite", *TINY], "--out", "in use by another qkv run")
    assert "--out-dir" not in line
    assert (out / "explorer.html").read_text() == "the running demo's\n"  # --overwrite waits for the lock


def test_a_full_disk_is_one_line_naming_the_path_and_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(qkv.data, "make_demo_data", full_disk)
    out = tmp_path / "run"
    line = refused(capsys, ["demo", "--out", out, *TINY], f"writing {out / 'data'}", "free some space",
                   "run the demo again")
    assert "Errno" not in line
    assert is_demo_folder(out)  # the run that failed is the demo's own: run again, it goes on
    with pytest.raises(OSError, match="Permission denied"):  # other errors pass unchanged
        with writing(out / "x"):
            raise PermissionError(errno.EACCES, "Permission denied")


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """A tiny demo run whose last write (explorer.html) met a full disk, then run again to the end."""
    from qkv.demo import run_demo
    out = tmp_path_factory.mktemp("demo") / "run"
    kw = dict(n_train=200, n_test=6, n_fresh=2, n_examples=2, max_steps=2, progress=False, show=1)
    mp = pytest.MonkeyPatch()
    mp.setattr(qkv.viz, "explorer_html", full_disk)
    with pytest.raises(OSError) as failed:
        run_demo(out, echo=lambda *a: None, **kw)
    mp.undo()
    lines = []
    result = run_demo(out, echo=lines.append, **kw)  # the same folder: its own, evaluated again
    return out, str(failed.value), result, lines


def test_a_full_disk_late_in_the_demo_names_that_file_and_the_rerun_finishes(demo_folder):
    out, failure, result, lines = demo_folder
    assert failure.startswith(f"no space left on the disk while writing {out / 'explorer.html'}")
    assert result.reused and (out / "explorer.html").is_file() and (out / MARKER).is_file()
    assert lines[-1].startswith("the demo took ") and " s in all" in lines[-1]  # the total wall time, always


class Stop:
    """A server that stops at once (Ctrl-C), so `qkv explore` returns after building its first view."""
    server_address = ("127.0.0.1", 0)

    def serve_forever(self):
        raise KeyboardInterrupt

    def server_close(self):
        pass


@pytest.fixture
def first_view(monkeypatch):
    """The examples `qkv explore` would serve first, filled by each run of the command."""
    import qkv.explore_server
    served = {}

    def fake_server(explorer, *, port, examples, **kw):
        served["examples"] = examples
        return Stop()
    monkeypatch.setattr(qkv.explore_server, "make_server", fake_server)
    return served


def test_the_live_explorer_of_a_demo_folder_opens_with_the_demos_examples(demo_folder, first_view, capsys):
    out = demo_folder[0]
    saved = saved_examples(out)
    page = (out / "explorer.html").read_text(encoding="utf-8")
    assert len(saved) == 2 and all(json.dumps(label)[1:-1] in page for label, _ in saved)
    assert saved_examples(out / "train") == saved == saved_examples(out / "train" / "checkpoints")
    assert saved_examples(out.parent) == []  # a folder above the demo's is not the demo's
    assert main(["explore", "--checkpoint", str(out), "--port", "0"]) == 0
    assert [(e["label"], e["source"]) for e in first_view["examples"]] == saved
    assert all(e["kinds"] and e["beam"] for e in first_view["examples"])  # run by the model now, as the page shows
    assert main(["explore", "--checkpoint", str(out), "--port", "0", "--text", "one"]) == 0
    assert [e["source"] for e in first_view["examples"]] == ["one"]  # sentences given: those
    assert "warning" not in capsys.readouterr().err


def test_a_damaged_examples_record_is_one_warning_and_the_explorer_still_opens(demo_folder, tmp_path, first_view,
                                                                               capsys):
    out = copy(demo_folder[0], tmp_path / "copy")
    record = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps({**record, "examples": [{"label": 3}]}))
    assert main(["explore", "--checkpoint", str(out), "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("qkv: warning:") == 1 and "results.json: 'examples' is not a list" in err
    assert first_view["examples"] == [] and "Traceback" not in err
