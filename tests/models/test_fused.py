"""The fused CPU scoring kernel: exact to the reference, used where it applies, eager elsewhere."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.profiler import profile

from models import fused, scan
from models.config import ModelConfig
from models.reference import reference_xattn_scores
from models.scan import scores_within_budget
from tests.models.test_scan import ALL_OPTIONS, make_inputs, with_garbage_padding

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KERNEL_OPS = ("scan_fused::contexts_in_lanes", "scan_fused::queries_in_lanes")


def kernel_calls(fn):
    """fn's result and how many times it ran the fused kernel."""
    with profile() as trace:
        result = fn()
    return result, sum(event.name in KERNEL_OPS for event in trace.events())


def test_kernel_builds_on_this_machine():
    assert fused.available()


@pytest.mark.parametrize("cross_attn,agg_func,raw_feature_norm", ALL_OPTIONS)
def test_fused_equals_reference_with_padding_and_image_lengths(cross_attn, agg_func, raw_feature_norm):
    img, cap, cap_lens, img_lens = make_inputs(seed=len(agg_func) * len(raw_feature_norm))
    options = ModelConfig(cross_attn=cross_attn, agg_func=agg_func, raw_feature_norm=raw_feature_norm,
                          lambda_softmax=4.0 if cross_attn == "i2t" else 9.0)
    expected = reference_xattn_scores(img, cap, cap_lens, img_lens=img_lens, cross_attn=cross_attn, agg_func=agg_func,
                                      raw_feature_norm=raw_feature_norm, lambda_softmax=options.lambda_softmax)
    with torch.no_grad():
        got, calls = kernel_calls(lambda: scores_within_budget(
            with_garbage_padding(img, img_lens, 55.0), with_garbage_padding(cap, cap_lens, -3e3), cap_lens, options,
            img_lens=img_lens, fused_kernel=True))
    assert calls > 0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cross_attn", ["t2i", "i2t"])
def test_fused_matches_eager_with_many_contexts_and_chunks(cross_attn):
    """100 regions (7 lane groups for t2i), captions up to 40 words (3 groups for i2t), several blocks."""
    img, cap, cap_lens, img_lens = make_inputs(seed=5, n_img=9, n_regions=100, n_cap=30, max_words=40, dim=16)
    options = ModelConfig(cross_attn=cross_attn, agg_func="LogSumExp")
    with torch.no_grad():
        run = lambda fused_kernel: scores_within_budget(img, cap, cap_lens, options, img_lens=img_lens,  # noqa: E731
                                                        memory_mb=1, fused_kernel=fused_kernel)
        got, calls = kernel_calls(lambda: run(True))
        assert calls > 1
        torch.testing.assert_close(got, run(False), atol=1e-5, rtol=0)


def test_eager_where_the_kernel_does_not_apply():
    img, cap, cap_lens, _ = make_inputs(seed=2)
    options = ModelConfig()
    leaf = img.clone().requires_grad_()
    scores, calls = kernel_calls(lambda: scores_within_budget(leaf, cap, cap_lens, options, fused_kernel=True))
    assert calls == 0 and scores.requires_grad  # training keeps autograd
    with torch.no_grad():
        _, calls = kernel_calls(lambda: scores_within_budget(img.bfloat16(), cap.bfloat16(), cap_lens, options,
                                                             fused_kernel=True))
        assert calls == 0  # bf16 scoring mode stays in PyTorch
        wide, calls = kernel_calls(lambda: scores_within_budget(
            torch.cat([img] * 33, dim=1), cap, cap_lens, options, fused_kernel=True))
        assert calls == 0 and wide.shape == (img.size(0), cap.size(0))  # 198 regions > MAX_CONTEXTS
        _, calls = kernel_calls(lambda: scores_within_budget(img, cap, cap_lens, options, fused_kernel=False))
        assert calls == 0


def test_automatic_choice_follows_the_size_of_the_computation(monkeypatch):
    img, cap, cap_lens, _ = make_inputs(seed=4)
    with torch.no_grad():
        _, small_calls = kernel_calls(lambda: scores_within_budget(img, cap, cap_lens, ModelConfig()))
        monkeypatch.setattr(scan, "FUSED_MIN_PRODUCTS", img.size(0) * img.size(1))
        _, large_calls = kernel_calls(lambda: scores_within_budget(img, cap, cap_lens, ModelConfig()))
    assert small_calls == 0 and large_calls > 0


def test_kernel_rejects_malformed_blocks_with_a_clear_message():
    assert fused.available()
    sim = torch.rand(2, 3, 4, 5)
    with pytest.raises(RuntimeError, match=r"gram: expected shape \[4, 5, 16\]"):
        fused.text_to_image(sim, torch.rand(4, 5, 5), torch.rand(2, 3), None, ModelConfig())
    with pytest.raises(RuntimeError, match="sim: expected a contiguous CPU tensor of Float"):
        fused.text_to_image(sim.double(), torch.rand(4, 5, 16), torch.rand(2, 3), None, ModelConfig())


def test_without_a_compiler_scoring_warns_once_and_stays_exact(tmp_path):
    """A machine that cannot build the kernel (here: no C++ compiler) still scores, in eager PyTorch."""
    script = textwrap.dedent("""
        import torch
        from models import fused
        from models.config import ModelConfig
        from models.reference import reference_xattn_scores
        from models.scan import scores_within_budget
        from tests.models.test_scan import make_inputs
        img, cap, cap_lens, img_lens = make_inputs(seed=1)
        with torch.no_grad():
            got = scores_within_budget(img, cap, cap_lens, ModelConfig(), img_lens=img_lens, fused_kernel=True)
            again = scores_within_budget(img, cap, cap_lens, ModelConfig(), img_lens=img_lens, fused_kernel=True)
        expected = reference_xattn_scores(img, cap, cap_lens, img_lens=img_lens)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        print("available", fused.available())
    """)
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "available False" in done.stdout
    assert done.stderr.count("fused SCAN scoring kernel unavailable") == 1
