"""The heads' dropout with numpy-drawn CPU masks (cmdr_ros.model.dropout) is dropout: same statistics, reproducible
under torch.manual_seed, identity at inference, and the attention it feeds equals scaled_dot_product_attention."""
import pytest
import torch
import torch.nn.functional as F

from cmdr_ros.model.dropout import Dropout, attention, dropout
from cmdr_ros.model.heads import CMDRHeads


def test_drop_rate_and_expectation():
    x = torch.ones(1 << 20)
    y = dropout(x, 0.1, True)
    dropped = float((y == 0).float().mean())
    # 6 sigma of a binomial mean over 2^20 draws is ~0.0018
    assert abs(dropped - 0.1) < 0.002
    assert abs(float(y.mean()) - 1.0) < 0.003
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.9), rtol=1e-4))


def test_gradient_is_the_mask():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.5, True)
    y.sum().backward()
    assert torch.equal(x.grad, torch.where(y != 0, 2.0, 0.0))
    assert 0 < int((y == 0).sum()) < y.numel()


def test_reproducible_under_manual_seed():
    x = torch.randn(4, 100, 50)
    torch.manual_seed(7)
    a = dropout(x, 0.3, True)
    b = dropout(x, 0.3, True)
    torch.manual_seed(7)
    assert torch.equal(a, dropout(x, 0.3, True))
    assert not torch.equal(a, b)  # each call draws a new mask


def test_inference_and_edge_probabilities():
    x = torch.randn(10, 10)
    assert dropout(x, 0.1, False) is x
    assert dropout(x, 0.0, True) is x
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))
    m = Dropout(0.25)
    assert isinstance(m, torch.nn.Dropout) and m.p == 0.25
    m.eval()
    assert m(x) is x


def test_attention_equals_sdpa_without_drops():
    """The explicit CPU training path (here with p below the mask's resolution: nothing dropped) equals the fused
    kernel, forward and backward, with and without a key mask."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, 2, 16, 5, requires_grad=True) for _ in range(3))
    for mask in (None, torch.arange(16)[None, None, None, :] < 11):
        got = attention(q, k, v, mask, 1e-9, True)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        g_got = torch.autograd.grad(got.square().sum(), (q, k, v))
        g_want = torch.autograd.grad(want.square().sum(), (q, k, v))
        for a, b in zip(g_got, g_want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_attention_dropout_zeroes_weights():
    torch.manual_seed(1)
    q, k = torch.randn(2, 1, 64, 4), torch.randn(2, 1, 64, 4)
    v = torch.eye(64).expand(2, 1, 64, 64)  # output = the attention weights themselves
    w = attention(q, k, v, None, 0.5, True)
    ref = F.scaled_dot_product_attention(q, k, v)
    frac = float((w == 0).float().mean())
    assert 0.45 < frac < 0.55
    kept = w != 0
    torch.testing.assert_close(w[kept], 2 * ref[kept], rtol=1e-4, atol=1e-6)


def test_heads_train_step_reproducible_and_eval_deterministic():
    def run():
        torch.manual_seed(5)
        heads = CMDRHeads("rgbd", 8, 12, 16, window=32, num_heads=2)
        f2, f3 = torch.randn(1, 8, 16, 16), torch.randn(1, 12, 16, 16)
        out = heads(f2, f3)
        sum(o.square().mean() for o in out.values()).backward()
        heads.eval()
        return out, heads(f2, f3), heads(f2, f3)
    (a, ea, ea2), (b, eb, _) = run(), run()
    for n in a:
        assert torch.equal(a[n], b[n])
        assert torch.equal(ea[n], eb[n]) and torch.equal(ea[n], ea2[n])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_uses_torch_dropout():
    x = torch.ones(1 << 16, device="cuda")
    y = dropout(x, 0.2, True)
    assert y.device.type == "cuda"
    assert abs(float((y == 0).float().mean()) - 0.2) < 0.01
