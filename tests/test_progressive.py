"""Progressive PAL depth: the active set grows downward on schedule; inactive PALs are inert."""

from __future__ import annotations

import pytest
import torch

from palbert import ModuleConfig, PalBert, Progressive
from tests.tiny_run import CLSHead


def tiny(progressive: Progressive) -> PalBert:
    torch.manual_seed(0)
    cfg = ModuleConfig(kind="pal", size=12, heads=3, init="normal", progressive=progressive)
    model = PalBert.from_pretrained("random:minilm", module=cfg)  # 6 layers
    model.add_task("a", CLSHead(384, 2))
    return model


@pytest.mark.parametrize(
    "prog, step, epoch, active",
    [
        (Progressive(start=1, every=10, grow=1), 0, 0, {5}),
        (Progressive(start=1, every=10, grow=1), 9, 0, {5}),
        (Progressive(start=1, every=10, grow=1), 10, 0, {4, 5}),
        (Progressive(start=2, every=5, grow=2), 12, 0, {0, 1, 2, 3, 4, 5}),
        (Progressive(start=1, every=10, grow=1), 1000, 0, {0, 1, 2, 3, 4, 5}),
        (Progressive(start=3, every=1, grow=1, unit="epochs"), 500, 2, {1, 2, 3, 4, 5}),
        (Progressive(start=3, every=2, grow=1, unit="epochs"), 500, 1, {3, 4, 5}),
    ],
)
def test_active_layers_follow_the_schedule(prog, step, epoch, active):
    model = tiny(prog)
    model.set_progress(step, epoch)
    assert model.task_modules["a"].active == active


def test_schedule_is_a_function_of_progress_so_resume_continues_it():
    a, b = tiny(Progressive(start=1, every=3)), tiny(Progressive(start=1, every=3))
    for step in range(10):
        a.set_progress(step, 0)
    b.set_progress(9, 0)  # a resumed run jumps straight to its step
    assert a.task_modules["a"].active == b.task_modules["a"].active == {2, 3, 4, 5}


def test_inactive_pals_contribute_nothing_and_get_no_gradient():
    model = tiny(Progressive(start=2, every=100))
    model.set_progress(0, 0)
    ids = torch.randint(0, 1000, (3, 7))
    mask = torch.ones_like(ids)
    model(dict(input_ids=ids, attention_mask=mask), task="a").sum().backward()
    pal = model.task_modules["a"]
    for l in range(6):
        grads = [p.grad for p in pal.attn[str(l)].parameters()]
        if l in (4, 5):
            assert all(g is not None and g.abs().sum() > 0 for g in grads), l
        else:
            assert all(g is None for g in grads), l
    # The output equals a model whose PALs exist only in the active layers.
    sub = ModuleConfig(kind="pal", size=12, heads=3, init="normal", layers=[4, 5])
    ref = PalBert.from_pretrained("random:minilm", module=sub)
    ref.add_task("a", CLSHead(384, 2))
    ref.load_state_dict(model.state_dict(), strict=False)
    model.eval(), ref.eval()
    with torch.no_grad():
        got = model(dict(input_ids=ids, attention_mask=mask), task="a")
        want = ref(dict(input_ids=ids, attention_mask=mask), task="a")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_progressive_is_for_pals_only():
    with pytest.raises(ValueError, match="progressive"):
        ModuleConfig(kind="adapter", progressive=Progressive())
