"""The bench scripts run against today's API: bench_pal.py once broke silently when a model
attribute was renamed. Tiny shapes, one call each; no timing is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import bench_pal, gpu_paper


@pytest.fixture(scope="module")
def minilm_variants():
    name, batch, _ = bench_pal.shape_batch("minilm:4x16")
    return bench_pal.variants(name, batch, compile=False)


def test_every_bench_pal_variant_runs_and_counts_parameters(minilm_variants):
    groups, params = minilm_variants
    assert {bench_pal.base_name(k) for k in groups["train"]} == {
        *bench_pal.TRAIN_VARIANTS,
        "bare_again",
        "pal_encoder",
    }
    times = bench_pal.measure({**groups["train"]}, rounds=1, iters=1, warmup=0)
    assert all(len(t[0]) == 1 and t[0][0] > 0 for t in times.values())
    bench_pal.measure(groups["infer"], rounds=1, iters=1, warmup=0)
    # MiniLM PALs: d_pal = 102 (384 * 204 / 768); V^E, V^D shared, Q/K/V per layer (6 layers)
    d, H, L = 102, 384, 6
    assert params["pal"] == 2 * H * d + d + H + L * (3 * d * d + 3 * d)
    assert params["lora8"] == L * 2 * 8 * (H + H)  # r=8 on query and value


def test_bench_pal_step_memory_sees_the_step_grow(minilm_variants):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs")
    groups, _ = minilm_variants
    seen = bench_pal.step_memory(groups["train"]["bare"])
    assert seen["kind"] == "cpu_rss" and seen["peak_bytes"] > 0


def test_flops_ratio_matches_the_count_by_hand():
    # bert-base at 128 tokens: per layer 4H^2 + 2TH + 2H*ffn, PAL 2Hd + 3d^2 + 2Td
    H, T, d, ffn = 768, 128, 204, 3072
    layer = 4 * H * H + 2 * T * H + 2 * H * ffn
    assert bench_pal.flops_ratio(H, 12, T, d, ffn) == pytest.approx(
        (layer + 2 * H * d + 3 * d * d + 2 * T * d) / layer
    )


def test_paired_ratio_and_its_interval():
    # a is 1.1x b in every turn while the machine's speed drifts 2x between rounds:
    # per-turn pairing sees 1.1 exactly, and the interval has no width
    b = [[1.0, 1.0], [2.0, 2.0], [1.5, 1.5]]
    a = [[1.1 * t for t in r] for r in b]
    row = bench_pal.ratio({"a": a, "b": b}, "a", "b")
    assert row["ratio_paired"] == pytest.approx(1.1)
    assert row["ci95_paired"] == pytest.approx((1.1, 1.1))
    lo, hi = bench_pal.bootstrap_ci([0.9, 1.0, 1.1, 1.2, 1.3] * 4)
    assert 0.9 <= lo < 1.1 < hi <= 1.3


def test_variants_filter_keeps_bare_and_matches_names_before_the_rank():
    assert bench_pal.keep("bare", ["pal"]) and bench_pal.keep("bare_again", ["pal"])
    assert bench_pal.keep("loraP_frozen(r=29)", ["loraP_frozen"])
    assert not bench_pal.keep("pal_frozen", ["pal"])
    assert bench_pal.keep("anything", None)


def test_gpu_census_counts_kernels_not_views():
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16), gpu_paper.Census() as c:
        lin(x).view(8).t()  # the view and the transpose launch nothing
    names = [k[0] for k in c.kernels]
    assert names.count("addmm") == 1 and "view" not in names and "t" not in names
    assert names.count("_to_copy") == 3  # autocast casts input, weight and bias to bf16
    (flops,) = [f for n, f, _ in c.kernels if n == "addmm"]
    assert flops == 2 * 2 * 8 * 4


def test_gpu_census_adds_cuda_dropout_and_prices_kernels(minilm_variants):
    groups, _ = minilm_variants
    train = gpu_paper.census(groups["train"]["bare"], train=True)
    # MiniLM: the embeddings' dropout and two per layer, each a forward and a backward kernel
    assert train["by_op"]["native_dropout"] == train["by_op"]["native_dropout_backward"] == 13
    assert "bernoulli_" not in train["by_op"]  # CPU's own dropout ops were switched off
    infer = gpu_paper.census(groups["infer"]["pal"], train=False)
    assert "native_dropout" not in infer["by_op"]
    gpu = {"tflops": 1.0, "gbps": 1.0}  # 1e12 FLOP/s at utilisation 1, 1e9 B/s
    kernels = [("tiny", 10, 10), ("gemm", 10**10, 10)]
    assert gpu_paper.gpu_seconds(kernels, gpu, util=1.0, launch=1e-5) == pytest.approx(1e-5 + 1e-2)


def test_pairs_match_variant_names_exactly_not_by_prefix():
    """The pair pal / pal_encoder takes pal itself, though pal_encoder also starts with
    "pal" and comes first."""
    times = {"bare": [[1.0]], "pal_encoder": [[2.0]], "pal": [[3.0]]}
    summary = bench_pal.summarize(times)
    assert summary["pal / pal_encoder"]["ratio_paired"] == pytest.approx(1.5)


def test_the_prepared_device_check_calls_bench_pal_with_flags_it_has():
    # bench/device/check.sh runs only on a lent GPU, where a wrong flag costs device time
    root = Path(__file__).resolve().parents[1]
    scripts = [root / "bench/device/prepare.sh", root / "bench/device/check.sh"]
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
    text = scripts[1].read_text()
    help_text = subprocess.run(
        [sys.executable, "-m", "bench.bench_pal", "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    calls = [line for line in text.replace("\\\n", " ").splitlines() if "bench.bench_pal" in line]
    flags = {
        f
        for line in calls
        if not line.lstrip().startswith("#")
        for f in re.findall(r"--[a-z-]+", line)
    }
    assert {"--device", "--memory", "--shapes", "--rounds", "--iters", "--out"} <= flags
    assert all(f in help_text for f in flags), flags
    for shape in re.search(r'SHAPES=\$\{SHAPES:-"([^"]+)"', text).group(1).split():
        name, _, _ = bench_pal.shape_batch(shape)  # each default shape parses
        assert name.startswith("random:")  # no weights travel to the device
