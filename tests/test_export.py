"""Task files: export, load in a fresh process, predict, sizes, and every refusal."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from palbert import ModuleConfig, PalBert
from palbert.integrity import write_sealed
from palbert.taskfile import TaskFileError, read_task_file
from palbert.tasks import build_task
from tests.tiny_run import run_fresh

ROOT = Path(__file__).resolve().parents[1]

# Tasks covering every way of feeding a head: single sentence, cross-encoded pair,
# bi-encoded pair with a trained head, and the parameter-free cosine head.
TASKS = {
    "sst": {"name": "sst"},
    "sts": {"name": "sts"},
    "quora_bi": {"name": "quora_bi", "extends": "quora", "encoding": "bi"},
    "sts_cos": {"name": "sts_cos", "extends": "sts", "head": {"type": "cosine"}},
}
SENTENCES = ["a gripping, funny film", "dull.", "the plot goes nowhere but the cast is great"]
PAIRS = [
    ("a man plays the guitar", "a man is playing a guitar"),
    ("how do i learn python?", "what is the best way to learn python"),
    ("the cat sleeps", "stocks fell sharply on monday"),
]
# float16 stores ~3 significant digits; through 6 layers of PALs and a head the
# predictions move by far less than this.
FP16_ATOL = 2e-2


def build(backbone: str, impl: str = "transformers", tasks=TASKS, seed: int = 0, **module):
    """A PalBert with randomly initialised ("normal") modules and heads for ``tasks``."""
    torch.manual_seed(seed)
    cfg = ModuleConfig(kind=module.pop("kind", "pal"), init="normal", **module)
    model = PalBert.from_pretrained(backbone, impl=impl, module=cfg)
    for name, d in tasks.items():
        task = build_task(d)
        model.add_task(name, task.build_head(model.hidden_size), spec=task)
    return model.eval()


def inputs_for(name: str):
    return SENTENCES if name == "sst" else PAIRS


@pytest.fixture(scope="module")
def tiny():
    return build("random:tiny", tasks={"sts": TASKS["sts"], "sst": TASKS["sst"]})


# -- round trip --------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["transformers", "minbert"])
def test_round_trip_in_a_fresh_process(impl, tmp_path):
    model = build("minilm", impl=impl)
    want = {name: model.predict(name, inputs_for(name), batch_size=2) for name in TASKS}
    for name in TASKS:
        model.save_task(name, tmp_path / f"{name}.safetensors")
        model.save_task(name, tmp_path / f"{name}.f16.safetensors", dtype="float16")

    code = f"""
import json
from palbert import PalBert
from tests.test_export import SENTENCES, PAIRS, TASKS
out = {{}}
for suffix in ("", ".f16"):
    model = PalBert.from_pretrained("minilm", impl={impl!r})
    for name in TASKS:
        model.load_task({str(tmp_path)!r} + "/" + name + suffix + ".safetensors")
    assert model.tasks == list(TASKS), model.tasks
    out[suffix] = {{n: model.predict(n, SENTENCES if n == "sst" else PAIRS, batch_size=2)
                   for n in TASKS}}
print(json.dumps(out))
"""
    got = json.loads(run_fresh(code))
    assert got[""] == json.loads(json.dumps(want))  # float32: exactly the same numbers
    for name in TASKS:
        for w, g in zip(want[name], got[".f16"][name], strict=True):
            if isinstance(w, float):
                assert abs(w - g) <= FP16_ATOL
            else:
                assert g["label"] == w["label"] or max(w["probs"].values()) < 0.6
                for k in w["probs"]:
                    assert abs(w["probs"][k] - g["probs"][k]) <= FP16_ATOL


def test_predict_shapes_and_modes():
    model = build("minilm")
    model.train()
    scores = model.predict("sts", PAIRS)
    assert model.training  # predict restores the mode it found
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    rows = model.predict("sst", SENTENCES, batch_size=1)
    assert [r["label_id"] for r in rows] == [int(r["label"]) for r in rows]
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-5 for r in rows)
    assert set(rows[0]["probs"]) == {"0", "1", "2", "3", "4"}
    # batch size and order do not change the answers
    again = model.predict("sst", SENTENCES[::-1], batch_size=3)[::-1]
    for a, b in zip(rows, again, strict=True):
        assert a["label"] == b["label"]
        assert all(abs(a["probs"][k] - b["probs"][k]) < 1e-5 for k in a["probs"])
    assert model.predict("sts", []) == []
    with pytest.raises(ValueError, match="pairs"):
        model.predict("sts", ["one sentence"])
    with pytest.raises(ValueError, match="single sentences"):
        model.predict("sst", [("a", "b")])


# -- format, dtype, size -----------------------------------------------------------------


def test_file_holds_weights_and_metadata(tiny, tmp_path):
    path = tiny.save_task("sts", tmp_path / "sts.safetensors", dtype="bfloat16")
    tf = read_task_file(path)
    assert tf.name == "sts" and tf.dtype == "bfloat16"
    assert {k.split(".")[0] for k in tf.tensors} == {"module", "head"}
    assert "module.V_E.weight" in tf.tensors and "module.V_D.weight" in tf.tensors
    assert all(t.dtype == torch.bfloat16 for t in tf.tensors.values())
    assert tf.spec["kind"] == "regression" and tf.spec["label_range"] == [0.0, 5.0]
    assert tf.module["kind"] == "pal" and tf.module["size"] == 6 * 3  # rule for H=64
    cfg = tf.backbone["config"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (64, 2, 1000)
    assert tf.backbone["name"] == "random:tiny" and len(tf.backbone["fingerprint"]) == 16
    # loading converts back to the model's dtype, values as stored
    fresh = PalBert.from_pretrained("random:tiny")
    fresh.backbone.load_state_dict(tiny.backbone.state_dict())
    fresh.load_task(path)
    got = fresh.task_modules["sts"].V_E.weight
    assert got.dtype == torch.float32
    assert torch.equal(got, tiny.task_modules["sts"].V_E.weight.to(torch.bfloat16).float())


def test_bert_base_pal_file_size(tmp_path):
    """The paper's PAL (d_pal=204) for bert-base is 1,819,836 parameters: 3.64 MB in fp16."""
    model = PalBert.from_pretrained("random:bert-base", module=ModuleConfig(kind="pal"))
    task = build_task("sts")
    model.add_task("sts", task.build_head(768), spec=task)
    n_module = sum(p.numel() for p in model.task_modules["sts"].parameters())
    n_head = sum(p.numel() for p in model.heads["sts"].parameters())
    assert (n_module, n_head) == (1_819_836, 769)
    path = model.save_task("sts", tmp_path / "sts.safetensors", dtype="float16")
    blob = path.read_bytes()
    (header_len,) = struct.unpack("<Q", blob[:8])
    data_bytes = len(blob) - 8 - header_len
    assert data_bytes == 2 * (n_module + n_head)
    assert header_len < 16_000  # tensor index and metadata: a few KB
    print(f"\nbert-base PAL task file, float16: {len(blob):,} bytes ({data_bytes:,} weights)")
    f32 = model.save_task("sts", tmp_path / "sts32.safetensors")
    assert f32.stat().st_size - 8 - struct.unpack("<Q", f32.read_bytes()[:8])[0] == 2 * data_bytes


# -- refusals ----------------------------------------------------------------------------


def test_refuses_another_backbone_shape(tiny, tmp_path):
    path = tiny.save_task("sts", tmp_path / "sts.safetensors")
    other = PalBert.from_pretrained("random:minilm")
    for force in (False, True):  # a shape mismatch cannot be forced
        with pytest.raises(TaskFileError) as e:
            other.load_task(path, force=force)
        msg = str(e.value)
        assert "random:tiny" in msg and "hidden_size=64" in msg and "vocab_size=1000" in msg
        assert "random:minilm" in msg and "hidden_size=384" in msg and "num_hidden_layers=6" in msg
    assert other.tasks == []


def test_refuses_other_weights_unless_forced(tiny, tmp_path):
    path = tiny.save_task("sts", tmp_path / "sts.safetensors")
    torch.manual_seed(123)
    other = PalBert.from_pretrained("random:tiny")  # same shape, different weights
    with pytest.raises(TaskFileError, match="fingerprint.*force=True"):
        other.load_task(path)
    assert other.tasks == []
    assert other.load_task(path, force=True) == "sts"
    # the same weights load without force
    same = PalBert.from_pretrained("random:tiny")
    same.backbone.load_state_dict(tiny.backbone.state_dict())
    same.load_task(path)


def test_fine_tuned_backbone_is_named_in_the_refusal(tiny, tmp_path):
    path = tiny.save_task("sts", tmp_path / "sts.safetensors", fine_tuned=True)
    other = PalBert.from_pretrained("random:tiny")
    with pytest.raises(TaskFileError, match="fine-tuned encoder: load it on the backbone/ folder"):
        other.load_task(path)


def test_refuses_a_second_task_of_the_same_name(tiny, tmp_path):
    path = tiny.save_task("sts", tmp_path / "sts.safetensors")
    model = PalBert.from_pretrained("random:tiny")
    model.backbone.load_state_dict(tiny.backbone.state_dict())
    model.load_task(path)
    before = model.heads["sts"]
    with pytest.raises(TaskFileError, match="already loaded.*replace=True"):
        model.load_task(path)
    assert model.heads["sts"] is before
    model.load_task(path, replace=True)
    assert model.heads["sts"] is not before and model.tasks == ["sts"]
    model.load_task(path, name="sts_copy")  # side by side under another name
    assert model.tasks == ["sts", "sts_copy"]
    model.remove_task("sts")
    assert model.tasks == ["sts_copy"]
    with pytest.raises(KeyError):
        model.remove_task("sts")


def test_truncated_file_is_an_error_naming_it(tiny, tmp_path):
    path = tiny.save_task("sts", tmp_path / "sts.safetensors")
    blob = path.read_bytes()
    model = PalBert.from_pretrained("random:tiny")
    for cut in (4, 100, len(blob) // 2, len(blob) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(blob[:cut])
        with pytest.raises(TaskFileError, match=str(bad)):
            model.load_task(bad, force=True)
    assert model.tasks == []


def test_corrupted_file_is_an_error_naming_it(tiny, tmp_path):
    path = tiny.save_task("sts", tmp_path / "sts.safetensors")
    blob = bytearray(path.read_bytes())
    model = PalBert.from_pretrained("random:tiny")
    flipped = bytearray(blob)
    flipped[-10] ^= 0xFF  # one weight byte
    garbage = b"\x00" * 3 + b"not a safetensors file at all" * 10
    header = bytearray(blob)
    header[12:20] = b"\xff" * 8  # inside the JSON header
    for i, data in enumerate((flipped, garbage, header)):
        bad = tmp_path / f"bad{i}.safetensors"
        bad.write_bytes(bytes(data))
        with pytest.raises(TaskFileError, match=str(bad)):
            model.load_task(bad, force=True)
    with pytest.raises(TaskFileError, match="does not exist"):
        model.load_task(tmp_path / "missing.safetensors")


def test_refuses_files_without_palbert_metadata(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"module.V_E.weight": torch.zeros(2, 2)}, plain, metadata={"format": "pt"})
    with pytest.raises(TaskFileError, match="no palbert metadata"):
        PalBert.from_pretrained("random:tiny").load_task(plain)


def test_refuses_a_newer_format_and_mismatched_tensors(tiny, tmp_path):
    path = tiny.save_task("sts", tmp_path / "sts.safetensors")
    tf = read_task_file(path)
    # the hash covers the metadata: each edited file is sealed anew, as a newer palbert or a
    # buggy writer would seal it, to reach the checks behind the hash
    meta = {k: v for k, v in _metadata(path).items() if k != "palbert.sha256"}

    newer = tmp_path / "newer.safetensors"
    write_sealed(newer, tf.tensors, {**meta, "palbert.format_version": "99"})
    with pytest.raises(TaskFileError, match="upgrade palbert"):
        read_task_file(newer)

    module = json.loads(meta["palbert.module"])
    bigger = tmp_path / "bigger.safetensors"
    size = {**module, "size": module["size"] * 2}
    write_sealed(bigger, tf.tensors, {**meta, "palbert.module": json.dumps(size)})
    model = PalBert.from_pretrained("random:tiny")
    with pytest.raises(TaskFileError, match="shape"):
        model.load_task(bigger, force=True)
    assert model.tasks == [] and len(model.task_modules) == 0


def test_loading_never_unpickles(tiny, tmp_path, monkeypatch):
    path = tiny.save_task("sts", tmp_path / "sts.safetensors")

    def forbidden(*a, **k):
        raise AssertionError("a task file must never be unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    PalBert.from_pretrained("random:tiny").load_task(path, force=True)


def test_export_needs_a_known_task_and_spec(tiny, tmp_path):
    with pytest.raises(KeyError, match="no task 'nope'"):
        tiny.save_task("nope", tmp_path / "x.safetensors")
    model = PalBert.from_pretrained("random:tiny")
    model.add_task("t", build_task("sst").build_head(64))
    with pytest.raises(KeyError, match="has no spec"):
        model.save_task("t", tmp_path / "t.safetensors")
    with pytest.raises(TaskFileError, match="dtype"):
        tiny.save_task("sts", tmp_path / "x.safetensors", dtype="int8")


def _metadata(path: Path) -> dict[str, str]:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n])["__metadata__"]
