"""What `convert` writes, and where it refuses to: OUT, the source, the current folder, signals and locks.

Each refusal asserts: exit 2, one line naming the bad value, no OUT created (or the old OUT intact), no
temporary folder or lock left, the source byte for byte unchanged, the current folder untouched (the whole
scratch tree is compared before and after). The headline cases run the CLI as a subprocess, as typed; the
signal tests send SIGTERM/SIGINT to a subprocess held mid-write by a patched writer (`python -c`). Full and
read-only disks are a real tmpfs and a real read-only bind mount (skipped, with the reason, where mounting
is not allowed; tests/test_robustness.py simulates both).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transformers

from hf_attn_variants import cli, io

from .conftest import save_tiny_checkpoint, tiny_model

PREFIX = "hf-attn-variants convert: error: "
# what a conversion of a tiny Llama with a character tokenizer and two chat templates writes, and only that
MODEL_FOLDER = {
    "README.md",
    "additional_chat_templates/tool_use.jinja",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}
STREAM = ["--kv-init", "mean"]  # pooled tensor by tensor: the streaming path of a local safetensors folder
# merged from calibration statistics: the in-memory path (save_pretrained + tokenizer.save_pretrained)
IN_MEMORY = ["--kv-init", "mean", "--fit", "--calibration-samples", "2", "--calibration-seq-len", "16"]


def tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``, links not followed: a file's sha256, a link's target, ``dir`` for folders."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            key = str(path.relative_to(folder))
            if path.is_symlink():
                found[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def files(folder: Path) -> set[str]:
    return {k for k, v in tree(folder).items() if v != "dir"}


def add_templates(src: Path) -> Path:
    (src / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (src / "additional_chat_templates").mkdir()
    (src / "additional_chat_templates" / "tool_use.jinja").write_text("{{ messages[0]['content'] }}")
    return src


@pytest.fixture
def place(tmp_path, monkeypatch):
    """tmp/home (HOME, with a user's file), tmp/work (the current folder, with a draft), tmp/work/models/src."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    (work / "models").mkdir(parents=True)
    (work / "draft.txt").write_text("unsaved work")
    add_templates(save_tiny_checkpoint(work / "models" / "src", "llama"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return tmp_path


def refused(capsys, root: Path, *argv) -> str:
    """``cli.main(convert *argv)`` exits 2 with one line of its own on stderr, no traceback, and nothing under
    ``root`` changed; the line."""
    before = tree(root)
    capsys.readouterr()  # what came before this run
    assert cli.main(["convert", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    lines = our_lines(err)  # besides progress bars
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and "Traceback" not in err, err
    assert tree(root) == before
    return lines[0][len(PREFIX) :]


def run_cli(*argv, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_attn_variants.cli", "convert", *map(str, argv)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("hf-attn-variants")]


# --- OUT: never a user's folder, never through a link ------------------------------------------------------


@pytest.mark.parametrize("out", ["", "."])
def test_an_unset_variable_or_the_current_folder_as_out_is_refused(place, out):
    """`convert SRC "$UNSET" --overwrite` and `convert SRC . --overwrite` deleted the current folder's files."""
    before = tree(place)
    result = run_cli("models/src", out, "--variant", "mqa", *STREAM, "--overwrite", cwd=place / "work")
    assert result.returncode == 2
    message = {
        "": "OUT '' is empty (an unset shell variable?); name the folder to write",
        ".": f"OUT '.' ('{place}/work') is the current folder or contains it; refused: name a new folder",
    }[out]
    assert our_lines(result.stderr) == [PREFIX + message] and "Traceback" not in result.stderr
    assert tree(place) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize(
    "out, message",
    [
        ("./", "OUT './' ('{tmp}/work') is the current folder or contains it; refused"),
        ("..", "OUT '..' ('{tmp}') is the current folder or contains it; refused"),
        ("models/..", "OUT 'models/..' ('{tmp}/work') is the current folder or contains it; refused"),
        ("{tmp}", "OUT '{tmp}' is the current folder or contains it; refused"),
        ("/", "OUT '/' is the root of the file system; refused"),
        ("{tmp}/home", "OUT '{tmp}/home' is your home folder or contains it; refused"),
        ("models", "OUT 'models' ('{tmp}/work/models') contains the source '{tmp}/work/models/src'"),
        ("models/src", "OUT 'models/src' ('{tmp}/work/models/src') is or lies inside the source"),
        ("models/src/converted", "OUT 'models/src/converted' ('{tmp}/work/models/src/converted') is or lies inside"),
    ],
)
def test_out_that_is_a_users_folder_is_refused(place, capsys, out, message, overwrite):
    tmp = str(place)
    err = refused(capsys, place, "models/src", out.format(tmp=tmp), "--variant", "mqa", *STREAM, *overwrite)
    assert err.startswith(message.format(tmp=tmp)), err


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("target", ["a folder", "a model folder", "nothing"])
def test_out_that_is_a_link_is_refused(place, capsys, target, overwrite):
    """Never replace a link's target, even a model folder: the link is the user's, so is what it points to."""
    elsewhere = place / "elsewhere"
    if target == "a folder":
        elsewhere.mkdir()
        (elsewhere / "victim.txt").write_text("keep me")
    elif target == "a model folder":
        save_tiny_checkpoint(elsewhere, "llama")
    (place / "work" / "out").symlink_to(elsewhere, target_is_directory=True)
    err = refused(capsys, place, "models/src", "out", "--variant", "mqa", *STREAM, *overwrite)
    assert err.startswith(f"OUT 'out' is a symbolic link (to '{elsewhere}'); it is never written through")


@pytest.mark.parametrize(
    "content, problem",
    [
        ({"thesis.tex": "chapter 1"}, "it holds 'thesis.tex', which a conversion does not write"),
        ({"config.json": "{}", "runs/log.txt": "step 1"}, "it holds the folder 'runs'"),
        (
            {"model.safetensors": "x", "training_args.bin": "x"},
            "it holds 'training_args.bin', which a conversion does not write",
        ),
        (
            {"additional_chat_templates/notes.txt": "x"},
            "it holds 'additional_chat_templates/notes.txt', which a conversion does not write",
        ),
    ],
)
def test_overwrite_replaces_only_a_model_folder(place, capsys, content, problem):
    out = place / "work" / "out"
    for name, text in content.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    err = refused(capsys, place, "models/src", "out", "--variant", "mqa", *STREAM, "--overwrite")
    assert err == (
        f"OUT 'out' ('{out}') does not look like a model folder ({problem}); --overwrite only replaces a folder of "
        "config, tokenizer, *.safetensors and README.md files: remove it yourself or choose another OUT"
    )


def test_overwrite_refuses_a_folder_holding_a_link(place, capsys):
    out = place / "work" / "out"
    save_tiny_checkpoint(out, "llama")
    (out / "config.json").unlink()
    (out / "config.json").symlink_to(place / "home" / "notes.txt")
    err = refused(capsys, place, "models/src", "out", "--variant", "mqa", *STREAM, "--overwrite")
    assert "does not look like a model folder ('config.json' is a symbolic link)" in err


@pytest.mark.parametrize("previous", ["a conversion", "an empty folder"])
def test_overwrite_replaces_a_model_folder_or_an_empty_one(place, capsys, previous):
    out = place / "work" / "out"
    if previous == "an empty folder":
        out.mkdir()
    else:
        assert cli.main(["convert", "models/src", "out", "--variant", "gqa", "--num-kv-heads", "2", *STREAM]) == 0
    source = tree(place / "work" / "models" / "src")
    assert cli.main(["convert", "models/src", "out", "--variant", "mqa", *STREAM, "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == 1
    assert files(out) == MODEL_FOLDER
    assert sorted(os.listdir(place / "work")) == ["draft.txt", "models", "out"]  # no temporary folder or lock
    assert tree(place / "work" / "models" / "src") == source


def test_a_source_shard_linking_into_out_is_never_overwritten(place, capsys):
    """SRC's shard is a link into OUT: replacing OUT would change (and here delete) the source."""
    assert cli.main(["convert", "models/src", "out", "--variant", "gqa", "--num-kv-heads", "2", *STREAM]) == 0
    capsys.readouterr()
    linked = place / "work" / "models" / "linked"
    shutil.copytree(place / "work" / "models" / "src", linked)
    (linked / "model.safetensors").unlink()
    (linked / "model.safetensors").symlink_to(place / "work" / "out" / "model.safetensors")
    err = refused(capsys, place, linked, "out", "--variant", "mqa", *STREAM, "--overwrite")
    assert err.startswith(
        f"OUT 'out' ('{place}/work/out') holds '{place}/work/out/model.safetensors', which the source's "
        f"'{linked}/model.safetensors' links to; replacing OUT would change the source"
    )


# --- only the model reaches OUT ------------------------------------------------------------------------------


def hostile_source(place: Path) -> Path:
    """SRC with what must not reach OUT: a link to a secret outside it, pickles, code, ``auto_map``, a folder."""
    src = place / "work" / "models" / "src"
    (place / "secret.txt").write_text("root:$6$hash")
    (src / "notes.txt").symlink_to(place / "secret.txt")
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    (src / "training_args.bin").write_bytes(b"\x80\x04pickle")
    marker = place / "imported"
    (src / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (src / "runs").mkdir()
    (src / "runs" / "events.log").write_text("step 1")
    for name in ("config.json", "tokenizer_config.json"):
        config = json.loads((src / name).read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM", "AutoTokenizer": ["x", "y"]}
        (src / name).write_text(json.dumps(config))
    return src


def check_only_the_model(out: Path, place: Path) -> None:
    assert files(out) == MODEL_FOLDER
    assert all(not p.is_symlink() for p in out.rglob("*"))
    for name in ("config.json", "tokenizer_config.json"):
        assert "auto_map" not in json.loads((out / name).read_text())
    assert "root:" not in "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    assert not (place / "imported").exists()
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.num_key_value_heads == 1
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert set(tokenizer.chat_template) == {"default", "tool_use"}


def test_files_from_outside_the_source_never_reach_out(place):
    """`notes.txt -> /etc/shadow` in SRC landed as a real file in OUT; so did pickles, *.py and auto_map."""
    src = hostile_source(place)
    before = tree(src)
    result = run_cli(src, "out", "--variant", "mqa", cwd=place / "work")
    assert result.returncode == 0, result.stderr
    check_only_the_model(place / "work" / "out", place)
    assert tree(src) == before


@pytest.mark.parametrize("kv_init", ["mean", "first", "random", "in memory"])
def test_only_model_files_are_written_on_every_path(place, kv_init):
    """Streaming (kv_init mean, first, random) and in memory (save_pretrained + tokenizer.save_pretrained)."""
    src = hostile_source(place)
    before = tree(src)
    how = IN_MEMORY if kv_init == "in memory" else ["--kv-init", kv_init]
    assert cli.main(["convert", str(src), "out", "--variant", "mqa", *how]) == 0
    check_only_the_model(place / "work" / "out", place)
    assert tree(src) == before


def sharded(folder: Path) -> Path:
    save_tiny_checkpoint(folder, "llama")
    (folder / "model.safetensors").unlink()
    tiny_model("llama", vocab_size=len(transformers.AutoTokenizer.from_pretrained(folder))).save_pretrained(
        folder, max_shard_size="40KB"
    )
    assert (folder / io.SAFETENSORS_INDEX).is_file()
    return folder


@pytest.mark.parametrize("layout", ["one shard", "index"])
@pytest.mark.parametrize("path", ["streaming", "in memory"])
def test_a_shard_linking_outside_the_source_gets_one_answer(tmp_path, capsys, layout, path):
    """With an index or without, a weights file that is a link out of SRC is refused, by the same rule."""
    src = tmp_path / "src"
    if layout == "one shard":
        save_tiny_checkpoint(src, "llama")
    else:
        sharded(src)
    shard = sorted(src.glob("*.safetensors"))[0]
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / shard.name
    shard.rename(moved)
    shard.symlink_to(moved)
    err = refused(
        capsys, tmp_path, src, tmp_path / "out", "--variant", "mqa", *(IN_MEMORY if path != "streaming" else STREAM)
    )
    assert err == (
        f"{shard.name!r} in {str(src)!r} is a link to {str(moved)!r}, outside the checkpoint folder; refused "
        "(files outside a checkpoint are never read or copied: copy the file into the folder)"
    )


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json", "generation_config.json", "vocab.json"])
def test_a_model_file_linking_outside_the_source_is_refused(tmp_path, capsys, name):
    src = save_tiny_checkpoint(tmp_path / "src", "llama")
    secret = tmp_path / "secret.json"
    secret.write_text((src / name).read_text() if (src / name).exists() else "{}")
    (src / name).unlink(missing_ok=True)
    (src / name).symlink_to(secret)
    err = refused(capsys, tmp_path, src, tmp_path / "out", "--variant", "mqa", *STREAM)
    assert err.startswith(f"{name!r} in {str(src)!r} is a link to {str(secret)!r}, outside the checkpoint folder")


@pytest.mark.parametrize("layout", ["one shard", "index"])
def test_links_inside_the_source_are_followed(tmp_path, layout):
    src = tmp_path / "src"
    if layout == "one shard":
        save_tiny_checkpoint(src, "llama")
    else:
        sharded(src)
    (src / "store").mkdir()
    for shard in src.glob("*.safetensors"):
        shard.rename(src / "store" / shard.name)
        shard.symlink_to(Path("store") / shard.name)
    assert cli.main(["convert", str(src), str(tmp_path / "out"), "--variant", "mqa", *STREAM]) == 0
    out = tmp_path / "out"
    assert {p.name for p in out.glob("*.safetensors")} == {p.name for p in (src / "store").iterdir()}
    assert not any(p.is_symlink() for p in out.iterdir())


def hub_cache(root: Path, folder: Path) -> Path:
    """``folder`` laid out as the Hugging Face cache does: snapshot files are links to ``../../blobs/<sha256>``."""
    repo = root / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, repo / "blobs" / blob)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    return snapshot


@pytest.mark.parametrize(
    "layout, path", [("one shard", "streaming"), ("index", "streaming"), ("one shard", "in memory")]
)
def test_the_hugging_face_cache_layout_converts(tmp_path, layout, path):
    built = tmp_path / "built"
    add_templates(save_tiny_checkpoint(built, "llama") if layout == "one shard" else sharded(built))
    snapshot = hub_cache(tmp_path, built)
    before = tree(tmp_path / "hub")
    how = IN_MEMORY if path == "in memory" else STREAM
    assert cli.main(["convert", str(snapshot), str(tmp_path / "out"), "--variant", "mqa", *how]) == 0
    out = tmp_path / "out"
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert (out / "tokenizer.json").read_bytes() == (built / "tokenizer.json").read_bytes()
    names = {p.name for p in built.glob("*.safetensors")} if path == "streaming" else {"model.safetensors"}
    assert {p.name for p in out.glob("*.safetensors")} == names
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.num_key_value_heads == 1
    assert tree(tmp_path / "hub") == before


def test_out_holding_the_caches_blobs_is_refused(tmp_path, capsys):
    snapshot = hub_cache(tmp_path, save_tiny_checkpoint(tmp_path / "built", "llama"))
    blobs = snapshot.parent.parent / "blobs"
    err = refused(capsys, tmp_path, snapshot, blobs, "--variant", "mqa", *STREAM, "--overwrite")
    assert err.startswith(f"OUT '{blobs}' holds '{blobs}/") and "replacing OUT would change the source" in err


# --- signals, locks, killed runs, failed renames -------------------------------------------------------------

HELD_STREAMING = """
import sys, time
from hf_attn_variants import cli, streaming
write = streaming.write_shard
def held(*args, **kwargs):
    done = write(*args, **kwargs)
    print("writing", flush=True)
    time.sleep(120)
    return done
streaming.write_shard = held
sys.exit(cli.main(sys.argv[1:]))
"""
HELD_IN_MEMORY = """
import sys, time, transformers
from hf_attn_variants import cli
save = transformers.PreTrainedModel.save_pretrained
def held(self, *args, **kwargs):
    save(self, *args, **kwargs)
    print("writing", flush=True)
    time.sleep(120)
transformers.PreTrainedModel.save_pretrained = held
sys.exit(cli.main(sys.argv[1:]))
"""


def start_held(script: str, *argv, cwd: Path) -> subprocess.Popen:
    """A conversion stopped just after writing its (first) weights file, OUT's temporary folder half-full."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, "convert", *map(str, argv)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if line.strip() == "writing":
            return process
    pytest.fail(f"the conversion ended before writing: {process.communicate()[1][-2000:]}")


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("previous", [False, True], ids=["new", "overwrite"])
@pytest.mark.parametrize(
    "signum, status, path",
    [
        (signal.SIGTERM, 143, "streaming"),
        (signal.SIGINT, 130, "streaming"),
        (signal.SIGHUP, 129, "streaming"),
        (signal.SIGTERM, 143, "in memory"),
        (signal.SIGINT, 130, "in memory"),
    ],
    ids=["SIGTERM", "SIGINT", "SIGHUP", "SIGTERM-in-memory", "SIGINT-in-memory"],
)
def test_a_signal_mid_write_removes_the_temporary_folder(place, signum, status, path, previous):
    """SIGTERM (timeout, Slurm, docker) left `.OUT.tmp-*` with partial shards; SIGINT printed a traceback."""
    work = place / "work"
    if previous:
        assert cli.main(["convert", "models/src", "out", "--variant", "gqa", "--num-kv-heads", "2", *STREAM]) == 0
    before = tree(place)
    script, how = (HELD_STREAMING, STREAM) if path == "streaming" else (HELD_IN_MEMORY, IN_MEMORY)
    process = start_held(script, "models/src", "out", "--variant", "mqa", "--overwrite", *how, cwd=work)
    assert [n for n in hidden(work) if n.startswith(".out.tmp-")]  # the half-written output exists now
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status
    assert our_lines(stderr) == [f"hf-attn-variants convert: stopped by {signal.Signals(signum).name}"]
    assert "Traceback" not in stderr
    assert tree(place) == before  # no OUT (or the previous one intact), no temporary folder, no lock


def test_a_second_conversion_to_the_same_out_fails_at_once(place):
    work = place / "work"
    first = start_held(HELD_STREAMING, "models/src", "out", "--variant", "mqa", *STREAM, cwd=work)
    started = time.monotonic()
    second = run_cli("models/src", "out", "--variant", "gqa", "--num-kv-heads", "2", *STREAM, "--overwrite", cwd=work)
    assert second.returncode == 2
    assert our_lines(second.stderr) == [
        f"{PREFIX}another conversion is writing OUT '{work}/out' (it holds '.out.lock'); wait for it to end or "
        "choose another OUT"
    ]
    assert "converting tensors" not in second.stderr  # refused before any weight was read
    assert time.monotonic() - started < 60
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert first.returncode == 143
    assert sorted(os.listdir(work)) == ["draft.txt", "models"]


def test_two_conversions_started_together_one_wins(place):
    """Both reported success before (the second replaced the first's OUT without --overwrite)."""
    work = place / "work"
    argv = [sys.executable, "-m", "hf_attn_variants.cli", "convert", "models/src", "out", "--variant", "mqa", *STREAM]
    runs = [subprocess.Popen(argv, cwd=work, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in "ab"]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert sorted(status for status, _ in results) == [0, 2]
    (line,) = our_lines(next(err for status, err in results if status == 2))
    assert line.startswith(f"{PREFIX}another conversion is writing OUT '{work}/out'") or line == (
        f"{PREFIX}OUT 'out' ('{work}/out') exists; pass --overwrite (overwrite=True) to replace it"
    )
    assert sorted(os.listdir(work)) == ["draft.txt", "models", "out"] and files(work / "out") == MODEL_FOLDER


def test_a_killed_runs_temporary_folder_goes_with_the_next_run(place):
    """SIGKILL cannot be handled: its `.OUT.tmp-*` stays, and the next run to the same OUT removes it."""
    work = place / "work"
    process = start_held(HELD_STREAMING, "models/src", "out", "--variant", "mqa", *STREAM, cwd=work)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    stale = [n for n in hidden(work) if n.startswith(".out.tmp-")]
    assert len(stale) == 1 and (work / stale[0] / "model.safetensors").is_file()
    result = run_cli("models/src", "out", "--variant", "mqa", *STREAM, cwd=work)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(work)) == ["draft.txt", "models", "out"] and files(work / "out") == MODEL_FOLDER


def test_a_temporary_folder_is_left_alone_while_its_lock_is_held(place):
    work = place / "work"
    (work / ".out.tmp-0123abcd").mkdir()
    (work / ".out.tmp-0123abcd" / "model.safetensors").write_bytes(b"partial")
    fd = os.open(work / ".out.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        before = tree(place)
        result = run_cli("models/src", "out", "--variant", "mqa", *STREAM, cwd=work)
        assert result.returncode == 2 and "another conversion is writing OUT" in our_lines(result.stderr)[0]
        assert tree(place) == before
    finally:
        os.close(fd)
    result = run_cli("models/src", "out", "--variant", "mqa", *STREAM, cwd=work)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(work)) == ["draft.txt", "models", "out"]


def test_a_failed_final_rename_keeps_the_previous_out(place, capsys, monkeypatch):
    work = place / "work"
    assert cli.main(["convert", "models/src", "out", "--variant", "gqa", "--num-kv-heads", "2", *STREAM]) == 0
    capsys.readouterr()
    replace = os.replace

    def failing(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".out.tmp-") and Path(dst) == work / "out":
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(io.os, "replace", failing)
    err = refused(capsys, place, "models/src", "out", "--variant", "mqa", *STREAM, "--overwrite")
    assert err.startswith(f"[Errno {errno.EXDEV}] {os.strerror(errno.EXDEV)}: '{work}/.out.tmp-")


def test_a_previous_out_moved_aside_by_a_killed_run_is_put_back(place, capsys):
    """Killed between moving the previous OUT aside and renaming the new one in: the next run restores it."""
    work = place / "work"
    assert cli.main(["convert", "models/src", "out", "--variant", "gqa", "--num-kv-heads", "2", *STREAM]) == 0
    capsys.readouterr()
    previous = tree(work / "out")
    (work / "out").rename(work / ".out.old-89abcdef")
    assert cli.main(["convert", "models/src", "out", "--variant", "mqa", *STREAM]) == 2
    assert capsys.readouterr().err.strip() == f"{PREFIX}OUT 'out' ('{work}/out') exists; pass --overwrite " + (
        "(overwrite=True) to replace it"
    )
    assert tree(work / "out") == previous and hidden(work) == []


def test_parent_folders_made_for_out_go_when_it_is_refused(place, capsys):
    """Refused after OUT's lock was taken: the folders made for the lock go too."""
    err = refused(capsys, place, "models/src", "new/deeper/out", "--variant", "gqa", "--num-kv-heads", "3")
    assert err.startswith("num_key_value_heads=3 does not divide num_attention_heads=8")


# --- real full and read-only disks ---------------------------------------------------------------------------


def mounted(command: list[str], folder: Path):
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot mount here ({getattr(err, 'stderr', '') or err}); test_robustness.py simulates it")
    return folder


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB tmpfs: the folder, the lock and the temporary folder fit, the weights (~400 KB) do not."""
    folder = tmp_path / "small"
    folder.mkdir()
    yield mounted(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], folder)
    subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture
def read_only(tmp_path):
    """A real read-only bind mount of a folder holding a tiny checkpoint."""
    folder = tmp_path / "ro"
    add_templates(save_tiny_checkpoint(folder, "llama"))
    mounted(["mount", "--bind", str(folder), str(folder)], folder)
    try:
        yield mounted(["mount", "-o", "remount,ro,bind", str(folder)], folder)
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("path", ["streaming", "in memory"])
def test_a_full_disk(small_disk, place, capsys, path):
    how = IN_MEMORY if path == "in memory" else STREAM
    err = refused(capsys, place, "models/src", small_disk / "out", "--variant", "mqa", *how)
    assert os.strerror(errno.ENOSPC) in err
    assert os.listdir(small_disk) == []


@pytest.mark.parametrize("path", ["streaming", "in memory"])
def test_a_read_only_out(read_only, place, capsys, path):
    how = IN_MEMORY if path == "in memory" else STREAM
    err = refused(capsys, place, "models/src", read_only / "out", "--variant", "mqa", *how)
    assert err == f"[Errno {errno.EROFS}] {os.strerror(errno.EROFS)}: '{read_only}/.out.lock'"


@pytest.mark.parametrize("path", ["streaming", "in memory"])
def test_a_read_only_source_converts(read_only, tmp_path, path):
    before = tree(read_only)
    how = IN_MEMORY if path == "in memory" else STREAM
    assert cli.main(["convert", str(read_only), str(tmp_path / "out"), "--variant", "mqa", *how]) == 0
    assert files(tmp_path / "out") == MODEL_FOLDER and tree(read_only) == before
