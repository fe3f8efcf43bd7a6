"""Every weights file palbert writes carries a hash of its header and tensors, and every read
checks it: task files, a run's best.safetensors and last/*.safetensors, an exported encoder.
A damaged file is refused in one line naming it; nothing is loaded from it or re-exported."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save, save_file

from palbert.integrity import (
    HASH_KEY,
    IntegrityError,
    check_sealed,
    read_header,
    read_sealed,
    write_sealed,
)
from tests.tiny_run import interrupted_run, one_line_error, snapshot, write_recipe

pytestmark = pytest.mark.usefixtures("one_thread", "token_cache")

TENSORS = {"a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(2)}
META = {"palbert.kind": "test", "label_range": "[0, 5]", "labels": '["neg", "pos"]'}


def header_of(blob: bytes) -> tuple[int, dict]:
    (n,) = struct.unpack("<Q", blob[:8])
    return n, json.loads(blob[8 : 8 + n])


def without_hash(path: Path, out: Path) -> Path:
    """``path`` written again with the same tensors and metadata, less palbert.sha256."""
    _, header = header_of(path.read_bytes())
    meta = {k: v for k, v in header["__metadata__"].items() if k != HASH_KEY}
    tensors, _ = read_sealed(path)
    save_file(tensors, str(out), metadata=meta)
    return out


def flip(path: Path, at: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0x01
    path.write_bytes(bytes(blob))


# -- the sealed format ----------------------------------------------------------------------


def test_a_sealed_file_reads_back_and_is_an_ordinary_safetensors_file(tmp_path):
    from safetensors.torch import load_file

    path = write_sealed(tmp_path / "w.safetensors", TENSORS, META)
    tensors, meta = read_sealed(path)
    assert all(torch.equal(tensors[k], TENSORS[k]) for k in TENSORS)
    assert {k: meta[k] for k in META} == META and len(meta[HASH_KEY]) == 64
    plain = load_file(str(path))  # any safetensors reader still reads it
    assert all(torch.equal(plain[k], TENSORS[k]) for k in TENSORS)
    assert not list(tmp_path.glob(".*"))  # no temporary left


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_one_byte_change_is_refused_or_changes_nothing(tmp_path_factory, data):
    """Anywhere in the file (tensor names, dtypes, shapes, offsets, metadata, weights): a
    changed byte is refused, unless the header still means the same (its padding)."""
    folder = tmp_path_factory.mktemp("flip")
    path = write_sealed(folder / "w.safetensors", TENSORS, META)
    blob = path.read_bytes()
    n, _ = header_of(blob)
    where = data.draw(st.integers(8, 8 + n - 1) | st.integers(0, len(blob) - 1))
    new = data.draw(st.sampled_from(b'0123456789aeFIUBE[]{},:" \t') | st.integers(0, 255))
    assume(new != blob[where])
    changed = bytearray(blob)
    changed[where] = new
    path.write_bytes(bytes(changed))
    try:
        tensors, meta = read_sealed(path)
    except IntegrityError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    assert header_of(bytes(changed))[1] == header_of(blob)[1]  # whitespace padding only
    assert all(torch.equal(tensors[k], TENSORS[k]) for k in TENSORS)


def test_a_missing_hash_is_damage_in_a_palbert_file(tmp_path):
    path = write_sealed(tmp_path / "w.safetensors", TENSORS, META)
    bare = without_hash(path, tmp_path / "bare.safetensors")
    for required in (True, False):  # a palbert.* key says palbert wrote it
        with pytest.raises(
            IntegrityError, match=f"bare.safetensors is damaged: .*lacks {HASH_KEY}"
        ):
            check_sealed(bare, required=required)
    foreign = tmp_path / "hf.safetensors"  # e.g. a Hugging Face model: nothing to check
    save_file(TENSORS, str(foreign), metadata={"format": "pt"})
    assert check_sealed(foreign, required=False) == {"format": "pt"}
    with pytest.raises(IntegrityError, match=f"lacks {HASH_KEY}"):
        check_sealed(foreign)  # where palbert must have written it


def test_garbage_and_truncation_are_refused_in_one_line(tmp_path):
    path = write_sealed(tmp_path / "w.safetensors", TENSORS, META)
    blob = path.read_bytes()
    for i, bad in enumerate((b"", b"\0" * 9, blob[:-1], blob[:20], b"\xff" * 64)):
        p = tmp_path / f"bad{i}.safetensors"
        p.write_bytes(bad)
        with pytest.raises(IntegrityError, match=f"{p} is damaged") as e:
            read_sealed(p)
        assert "\n" not in str(e.value)
    with pytest.raises(IntegrityError, match="does not exist"):
        read_header(tmp_path / "missing.safetensors")


# -- task files --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    from palbert import PalBert
    from palbert.tasks import build_task

    torch.manual_seed(0)
    model = PalBert.from_pretrained("random:tiny")
    task = build_task("sts")
    model.add_task("sts", task.build_head(64), spec=task)
    return model.save_task("sts", tmp_path_factory.mktemp("tf") / "sts.safetensors").read_bytes()


@pytest.mark.parametrize("field", ['"label_range"', '"dropout"', '"size"', '"max_length"'])
def test_a_one_byte_change_of_the_task_metadata_is_refused(task_file, tmp_path, field):
    """label_range, head and module sizes change predictions; the hash covers them."""
    from palbert.taskfile import TaskFileError, read_task_file

    n, header = header_of(task_file)
    head = task_file[8 : 8 + n]
    esc = json.dumps(field)[1:-1].encode()  # as it appears inside a JSON-encoded string value
    at = head.index(esc) + len(esc)
    at = next(i for i in range(at, n) if chr(head[i]).isdigit())  # its first digit
    blob = bytearray(task_file)
    blob[8 + at] = ord("7") if head[at] != ord("7") else ord("3")
    path = tmp_path / "edited.safetensors"
    path.write_bytes(bytes(blob))
    assert header_of(bytes(blob))[1] != header  # the file says something else now
    with pytest.raises(TaskFileError, match=f"{path} is damaged"):
        read_task_file(path)


def test_a_task_file_without_its_hash_is_refused(task_file, tmp_path):
    from palbert.taskfile import TaskFileError, read_task_file

    path = tmp_path / "sts.safetensors"
    path.write_bytes(task_file)
    bare = without_hash(path, tmp_path / "bare.safetensors")
    with pytest.raises(TaskFileError, match=f"lacks {HASH_KEY}"):
        read_task_file(bare)


def test_task_files_of_format_1_still_read(task_file, tmp_path):
    """Format 1 hashed the tensor bytes only; such files load (and a damaged one does not)."""
    import hashlib

    from palbert.taskfile import TaskFileError, read_task_file

    n, header = header_of(task_file)
    meta = {k: v for k, v in header["__metadata__"].items() if k != HASH_KEY}
    meta["palbert.format_version"] = "1"
    path = tmp_path / "sts.safetensors"
    path.write_bytes(task_file)
    tensors = read_task_file(path).tensors
    old = save(tensors, metadata=meta)
    (m,) = struct.unpack("<Q", old[:8])
    digest = hashlib.sha256(old[8 + m :]).hexdigest()
    v1 = tmp_path / "v1.safetensors"
    v1.write_bytes(save(tensors, metadata={**meta, HASH_KEY: digest}))
    tf = read_task_file(v1)
    assert all(torch.equal(tf.tensors[k], tensors[k]) for k in tensors)
    flip(v1, len(v1.read_bytes()) - 3)
    with pytest.raises(TaskFileError, match="damaged"):
        read_task_file(v1)
    # and a format-2 file relabelled 1 does not get the weaker check: its hash covers the header
    at = task_file.index(b'"palbert.format_version":"2"') + len(b'"palbert.format_version":"')
    relabelled = bytearray(task_file)
    relabelled[at] = ord("1")
    path.write_bytes(bytes(relabelled))
    with pytest.raises(TaskFileError, match="damaged"):
        read_task_file(path)


def resealed(task_file: bytes, path: Path, edit) -> Path:
    """The task file sealed again by palbert's own writer after ``edit(tensors, meta)``: its
    hash is valid, so only the checks of what it holds can refuse it."""
    n, header = header_of(task_file)
    meta = {k: v for k, v in header["__metadata__"].items() if k != HASH_KEY}
    path.write_bytes(task_file)
    tensors, _ = read_sealed(path)
    edit(tensors, meta)
    return write_sealed(path, tensors, meta)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_whatever_the_seal(task_file, tmp_path, value):
    from palbert.taskfile import TaskFileError, read_task_file

    def poison(tensors, meta):
        tensors["module.V_D.weight"][0, 0] = value

    path = resealed(task_file, tmp_path / "sts.safetensors", poison)
    assert check_sealed(path)  # the seal is good
    with pytest.raises(TaskFileError) as e:
        read_task_file(path)
    assert str(path) in str(e.value) and "module.V_D.weight" in str(e.value)
    assert "non-finite" in str(e.value)
    # a file without any seal (required=False) gets the same check
    save_file({"w": torch.tensor([1.0, value])}, str(tmp_path / "hf.safetensors"))
    with pytest.raises(IntegrityError, match="non-finite values .* in tensor w"):
        read_sealed(tmp_path / "hf.safetensors", required=False)


def test_an_encoder_with_non_finite_weights_is_refused(tiny_setup, tmp_path):
    from palbert.backbones import BackboneError, load_backbone

    backbone, _ = tiny_setup
    folder = shutil.copytree(backbone, tmp_path / "enc")
    weights = folder / "model.safetensors"
    tensors, _ = read_sealed(weights, required=False)
    key = next(k for k in tensors if "attention.output.dense.weight" in k)
    tensors[key][1, 2] = float("nan")
    save_file(tensors, str(weights), metadata={"format": "pt"})  # a stock, unsealed folder
    for impl in ("transformers", "minbert"):
        with pytest.raises(BackboneError, match=f"{folder}.* non-finite .* in tensor "):
            load_backbone(str(folder), impl=impl)


@pytest.mark.parametrize("depth", [40, 100_000])
def test_nested_json_in_task_metadata_is_one_error(task_file, tmp_path, depth):
    """Deeply nested JSON in a (resealed) metadata string: refused by name, not a
    RecursionError, whether it is deeper than Python's stack or only than palbert's bound."""
    from palbert.taskfile import TaskFileError, read_task_file

    def nest(tensors, meta):
        meta["palbert.spec"] = "[" * depth + "]" * depth

    path = resealed(task_file, tmp_path / "sts.safetensors", nest)
    with pytest.raises(TaskFileError, match=r"palbert.spec is not valid JSON \(nested"):
        read_task_file(path)


def test_a_header_of_too_many_tensors_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    """A small file of very many zero-size tensors once took minutes and gigabytes to refuse:
    its header is refused by its size and tensor count before any JSON is parsed."""
    import palbert.integrity as integrity

    entry = '"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    n = integrity.MAX_TENSORS + 1
    raw = ("{" + ",".join(entry % i for i in range(n)) + "}").encode()
    assert len(raw) < integrity.MAX_HEADER
    path = tmp_path / "many.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    parsed = []
    monkeypatch.setattr(integrity.json, "loads", lambda *a, **k: parsed.append(1))
    with pytest.raises(IntegrityError, match=f"{path} .* lists {n:,} tensors"):
        read_header(path)
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as fh:  # sparse: a header length past the bound
        fh.write(struct.pack("<Q", integrity.MAX_HEADER + 1))
        fh.truncate(integrity.MAX_HEADER + 64)
    with pytest.raises(
        IntegrityError,
        match=f"{big} is damaged .* header would be {integrity.MAX_HEADER + 1:,} bytes",
    ):
        read_header(big)
    assert not parsed


def test_a_task_file_header_is_read_once(task_file, tmp_path, monkeypatch):
    import palbert.integrity as integrity
    import palbert.taskfile as taskfile

    path = tmp_path / "sts.safetensors"
    path.write_bytes(task_file)
    reads = []
    real = integrity.read_header

    def counted(*args, **kwargs):
        reads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(integrity, "read_header", counted)
    monkeypatch.setattr(taskfile, "read_header", counted, raising=False)
    monkeypatch.setattr(
        taskfile, "metadata", lambda p, w=None: counted(p, w)[1]["__metadata__"], raising=False
    )
    taskfile.read_task_file(path)
    assert len(reads) == 1


# -- run folders ---------------------------------------------------------------------------


def trained_run(tiny_setup, tmp_path, **train) -> tuple[Path, Path]:
    from palbert.recipe import load_recipe
    from palbert.training.run import train as train_run

    backbone, data = tiny_setup
    path = write_recipe(tmp_path, backbone, data, train={"max_steps": 4, **train})
    return path, train_run(load_recipe(path), progress=False)


def test_every_weights_file_of_a_run_is_sealed(tiny_setup, tmp_path):
    _, run = trained_run(tiny_setup, tmp_path)
    files = [run / "best.safetensors", run / "last/weights.safetensors"]
    files.append(run / "last/state.safetensors")
    for f in files:
        assert HASH_KEY in check_sealed(f), f


def test_a_damaged_best_checkpoint_fails_eval_export_and_load(
    tiny_setup,
    tmp_path,
    capsys,
):
    from palbert.cli import main
    from palbert.training.run import load_run

    _, run = trained_run(tiny_setup, tmp_path)
    best = run / "best.safetensors"
    flip(best, len(best.read_bytes()) - 100)  # one weight byte
    with pytest.raises(IntegrityError, match=f"{best} is damaged"):
        load_run(run)
    predict = ["predict", str(run), "--split", "dev", "--out", str(tmp_path / "pred")]
    for cmd in (["eval", str(run)], ["export", str(run), "--task", "all"], predict):
        capsys.readouterr()
        assert main(cmd) == 2, cmd
        err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert len(err) == 1 and f"{best} is damaged" in err[0], err
    assert not (run / "export").exists()  # nothing re-sealed from damaged weights
    assert not (tmp_path / "pred").exists()

    good = run / "good.safetensors"
    flip(best, len(best.read_bytes()) - 100)  # back to what was written
    shutil.copy(best, good)
    without_hash(good, best)
    with pytest.raises(IntegrityError, match=f"lacks {HASH_KEY}"):
        load_run(run)


@pytest.mark.parametrize("name", ["weights.safetensors", "state.safetensors"])
def test_a_damaged_resume_checkpoint_is_refused_and_changes_nothing(
    tiny_setup,
    tmp_path,
    capsys,
    name,
):
    from palbert.cli import main
    from palbert.training.run import load_run

    backbone, data = tiny_setup
    path, run = interrupted_run(tmp_path, backbone, data)
    damaged = run / "last" / name
    flip(damaged, len(damaged.read_bytes()) - 5)
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", str(path), "--resume", str(run), "--no-progress"]) == 2
    assert f"{damaged} is damaged" in one_line_error(capsys.readouterr().err)
    assert snapshot(run) == before
    if name == "weights.safetensors":
        with pytest.raises(IntegrityError, match=f"{damaged} is damaged"):
            load_run(run, which="last")


def test_an_exported_encoder_is_checked_when_loaded(tiny_setup, tmp_path):
    from palbert import BackboneError, PalBert
    from palbert.export import export_backbone

    backbone, _ = tiny_setup
    model = PalBert.from_pretrained(str(backbone))  # a stock folder: no palbert hash, loads
    out = export_backbone(model, tmp_path / "enc")
    weights = out / "model.safetensors"
    assert HASH_KEY in check_sealed(weights)
    again = PalBert.from_pretrained(str(out))
    assert again.fingerprint() == model.fingerprint()
    flip(weights, len(weights.read_bytes()) - 10)
    with pytest.raises(BackboneError, match=f"{weights} is damaged"):
        PalBert.from_pretrained(str(out))
    flip(weights, len(weights.read_bytes()) - 10)
    shutil.move(weights, tmp_path / "sealed.safetensors")
    without_hash(tmp_path / "sealed.safetensors", weights)  # palbert.* keys stay: damage
    with pytest.raises(BackboneError, match=f"lacks {HASH_KEY}"):
        PalBert.from_pretrained(str(out), impl="minbert")


# -- leftovers and fsync ------------------------------------------------------------------


def test_resume_removes_a_stale_previous_checkpoint(tiny_setup, tmp_path):
    """A kill while ``.last.old`` was being removed leaves it beside a complete last/."""
    from palbert.recipe import load_recipe
    from palbert.training.run import TrainingInterrupted, train

    backbone, data = tiny_setup
    path, run = interrupted_run(tmp_path, backbone, data)
    shutil.copytree(run / "last", run / ".last.old")
    with pytest.raises(TrainingInterrupted):  # stops before its next checkpoint
        train(load_recipe(path), resume=run, progress=False, stop_at_step=3)
    assert not [p.name for p in run.glob(".*")]


def test_a_killed_swap_resumes_from_the_previous_checkpoint(tiny_setup, tmp_path):
    """Killed between the swap's two renames: last/ is gone, .last.old holds the checkpoint;
    the resume uses it and keeps it until a new last/ exists."""
    from palbert.recipe import load_recipe
    from palbert.training.run import TrainingInterrupted, train

    backbone, data = tiny_setup
    path, run = interrupted_run(tmp_path, backbone, data)
    (run / "last").rename(run / ".last.old")
    with pytest.raises(TrainingInterrupted):
        train(load_recipe(path), resume=run, progress=False, stop_at_step=3)
    assert (run / ".last.old" / "state.json").is_file() and not (run / "last").exists()
    train(load_recipe(path), resume=run, progress=False)
    assert (run / "COMPLETE").exists() and not [p.name for p in run.glob(".*")]


def test_every_rename_follows_an_fsync_of_what_it_moves(tiny_setup, tmp_path, monkeypatch):
    """A power cut must not leave a renamed but empty file: the file (for a folder, its
    files and the folder) is fsynced before the rename, and the folder holding it between
    two renames."""
    import os

    events: list[tuple[str, Path]] = []
    fsync, replace = os.fsync, os.replace

    def my_fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        return fsync(fd)

    def my_replace(src, dst):
        events.append(("replace", Path(os.path.realpath(src))))
        return replace(src, dst)

    monkeypatch.setattr(os, "fsync", my_fsync)
    monkeypatch.setattr(os, "replace", my_replace)
    _, run = trained_run(tiny_setup, tmp_path, save_every=1)
    runs = (tmp_path / "runs").resolve()
    renames = [i for i, (kind, p) in enumerate(events) if kind == "replace" and runs in p.parents]
    swaps = [i for i in renames if events[i][1].name == "last"]
    assert len(renames) > 6 and len(swaps) >= 2  # files, checkpoint folders, swaps
    for i in renames:
        src = events[i][1]
        before = {p for kind, p in events[:i] if kind == "fsync"}
        if i in swaps:  # last/ -> .last.old: the run folder is synced before the next rename
            assert events[i + 1] == ("fsync", run.resolve()), events[i : i + 2]
            continue
        assert src in before, src
        if src.name.startswith(".last.tmp-"):
            assert {"weights.safetensors", "state.safetensors", "state.json"} <= {
                p.name for p in before if p.parent == src
            }


def test_a_token_cache_file_is_fsynced_before_its_rename(tmp_path, monkeypatch):
    import os

    import numpy as np

    from palbert.tasks.batching import Segments, TokenizedSplit, load_tokenized, save_tokenized

    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(
        os,
        "fsync",
        lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), fsync(fd)),
    )
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append(("replace", os.path.realpath(a))), replace(a, b))
    )
    ids = np.array([2, 9, 3, 2, 3], dtype=np.int32)
    data = TokenizedSplit(ids=["x", "y"], a=Segments(ids, np.array([0, 3, 5])), pad_id=0)
    path = tmp_path / "cache" / "k.npz"
    save_tokenized(path, data)
    (i,) = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert ("fsync", events[i][1]) in events[:i]
    assert load_tokenized(path).ids == ["x", "y"] and os.listdir(path.parent) == ["k.npz"]
