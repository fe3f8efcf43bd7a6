"""One device parser for ``train.device`` and ``--device``: the same rules, each error naming
the setting it came from."""

from __future__ import annotations

import pytest
import torch

from palbert.devices import DeviceError, parse_device


@pytest.mark.parametrize("setting", ["train.device", "--device"])
@pytest.mark.parametrize(
    "name, message",
    [
        ("foo", "is not a device"),
        ("meta", "palbert runs on cpu or cuda"),
        ("cuda:99", "CUDA device"),  # none here, or not 100 of them
    ],
)
def test_a_device_that_cannot_work_is_refused_naming_the_setting(setting, name, message):
    with pytest.raises(DeviceError, match=message) as e:
        parse_device(name, setting)
    assert str(e.value).startswith(f"{setting} {name!r}")


def test_auto_and_none_pick_cuda_where_there_is_one():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert parse_device(None, "--device").type == parse_device("auto", "x").type == want
    assert parse_device("cpu", "--device") == torch.device("cpu")
