"""Fusion maths against hand-worked values and an independent NumPy/SciPy transcription of PAPER_NOTES."""
import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter

from cmdr_ros.model import fusion


def np_box(x, size, passes):
    """avg-pool with zero padding counted == uniform filter with constant 0 borders."""
    for _ in range(passes):
        x = uniform_filter(x, size=size, mode="constant", cval=0.0)
    return x


def np_fuse(d_map2d, d_map3d, d_rec2d, d_rec3d, valid, beta=0.3):
    """PAPER_NOTES 'Anomaly scoring at test time', line by line, for one image."""
    d_rec2d = np_box(np_box(d_rec2d, 5, 3), 7, 2)
    j = d_map2d * d_map3d
    s = np.sqrt(uniform_filter((j - j.mean()) ** 2, size=7, mode="constant", cval=0.0))
    w = 4 + 2 * s / (s.mean() + 1e-8)
    a_map = 1 / (1 + np.exp(-w * j)) * j
    w2, w3 = np.exp(-beta * d_rec2d), np.exp(-beta * d_rec3d)
    a_rec = (w2 * d_rec2d + w3 * d_rec3d) / (w2 + w3 + 1e-8)
    f = a_map * a_rec * valid
    return np_box(np_box(f, 5, 5), 7, 3)


def test_feature_distance_hand_values():
    a = torch.tensor([[3.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # pixels (3,0) and (0,1)
    b = torch.tensor([[1.0, 0.0], [2.0, 0.0]]).T.reshape(1, 2, 1, 2)  # pixels (1,0) and (2,0)
    d = fusion.feature_distance(a, b)
    # same direction -> 0; orthogonal unit vectors -> sqrt(2)
    torch.testing.assert_close(d, torch.tensor([[[0.0, 2**0.5]]]))
    d = fusion.feature_distance(a, b, valid=torch.tensor([[[True, False]]]))
    torch.testing.assert_close(d, torch.tensor([[[0.0, 0.0]]]))


def test_box_filter_of_a_delta():
    x = torch.zeros(9, 9)
    x[4, 4] = 25.0
    y = fusion.box_filter(x, 5)
    assert torch.allclose(y[2:7, 2:7], torch.ones(5, 5)) and y.sum() == 25.0
    # a delta at the corner loses mass at the zero-padded border: 3x3 of the 5x5 window lies inside
    x = torch.zeros(9, 9)
    x[0, 0] = 25.0
    assert fusion.box_filter(x, 5).sum().item() == pytest.approx(9.0)


def test_reliability_gate_constant_map():
    # constant J: s = 0 everywhere, so W = 4 + 0 and A = sigmoid(4 J) J
    j = 0.5
    d = torch.full((8, 8), j**0.5)
    a = fusion.reliability_gated_mapping_anomaly(d, d)
    expected = 1 / (1 + np.exp(-4 * j)) * j
    assert torch.allclose(a, torch.full((8, 8), expected, dtype=torch.float32))


def test_confidence_weighting_hand_values():
    d2, d3 = torch.tensor([1.0]), torch.tensor([2.0])
    w2, w3 = np.exp(-0.3), np.exp(-0.6)
    expected = (w2 * 1 + w3 * 2) / (w2 + w3 + 1e-8)
    out = fusion.confidence_weighted_reconstruction_anomaly(d2, d3, beta=0.3)
    assert out.item() == pytest.approx(expected, rel=1e-6)
    # equal distances -> the same distance back
    assert fusion.confidence_weighted_reconstruction_anomaly(d3, d3).item() == pytest.approx(2.0, rel=1e-6)


def test_full_fusion_matches_numpy_transcription():
    rng = np.random.default_rng(0)
    maps = [rng.random((2, 32, 32)).astype(np.float32) for _ in range(4)]
    valid = rng.random((2, 32, 32)) > 0.3
    out = fusion.fuse_rgbd(*[torch.from_numpy(m) for m in maps], torch.from_numpy(valid), beta=0.3).numpy()
    for b in range(2):
        ref = np_fuse(*[m[b].astype(np.float64) for m in maps], valid[b])
        np.testing.assert_allclose(out[b], ref, rtol=2e-4, atol=1e-7)


def test_single_modality_maps():
    rng = np.random.default_rng(1)
    d = rng.random((16, 16)).astype(np.float32)
    valid = rng.random((16, 16)) > 0.2
    out3 = fusion.anomaly_map_3d(torch.from_numpy(d), torch.from_numpy(valid)).numpy()
    np.testing.assert_allclose(out3, np_box(d * valid, 5, 1), rtol=1e-5, atol=1e-7)
    out2 = fusion.anomaly_map_2d(torch.from_numpy(d), torch.from_numpy(valid)).numpy()
    np.testing.assert_allclose(out2, np_box(np_box(d * valid, 5, 3), 7, 2) * valid, rtol=1e-5, atol=1e-7)


def test_image_and_pixel_score_normalisation():
    f = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    # non-zero mean = 2 -> score = 3 / sqrt(2)
    assert fusion.image_score(f).item() == pytest.approx(3 / 2**0.5)
    # pixel scores: F / sqrt(mean F) with mean over all 4 pixels = 1.5
    torch.testing.assert_close(fusion.pixel_scores(f), f / 1.5**0.5)
    # PRO scores: F / mean of non-zero F = F / 2
    torch.testing.assert_close(fusion.pro_scores(f), f / 2)
    assert fusion.image_score(torch.zeros(3, 3)).item() == 0.0


def test_batched_normalisation_is_per_image():
    f = torch.stack([torch.ones(4, 4), 10 * torch.ones(4, 4)])
    s = fusion.image_score(f)
    torch.testing.assert_close(s, torch.tensor([1.0, 10 / 10**0.5]))


def test_reference_3d_pixel_scores():
    """3D-only pixel scores of the reference (both P-AUROC and AUPRO): F / (sqrt(mean of non-zero F) + 1e-6)."""
    f = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    expected = f / (2**0.5 + 1e-6)  # non-zero mean 2
    torch.testing.assert_close(fusion.sqrt_nonzero_scores(f), expected)
    for metric in ("p_auroc", "aupro"):
        torch.testing.assert_close(fusion.normalized_scores(f, "sqrt_nonzero", metric), expected)
    torch.testing.assert_close(fusion.normalized_scores(f, "split", "p_auroc"), fusion.pixel_scores(f))
    torch.testing.assert_close(fusion.normalized_scores(f, "split", "aupro"), fusion.pro_scores(f))
    b = torch.stack([f, 4 * f])  # per image: the scale cancels except for the 1e-6
    torch.testing.assert_close(fusion.sqrt_nonzero_scores(b)[1], 4 * f / (8**0.5 + 1e-6))
    assert fusion.sqrt_nonzero_scores(torch.zeros(2, 2)).abs().sum() == 0
    with pytest.raises(ValueError, match="unknown pixel normalisation"):
        fusion.normalized_scores(f, "max", "aupro")
