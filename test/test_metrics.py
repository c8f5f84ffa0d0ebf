"""Tests for cmdr_ros.metrics against hand-worked examples and brute-force references.

Curve notation: points are (FPR, PRO); thresholds admit pixels with score >= t, scanned from the
highest score down. Every pro_curve starts with (0, 0) and ends with an appended (1, 1).
"""
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from cmdr_ros import CmdrError
from cmdr_ros.metrics import aupro, compute_metrics, pro_curve, roc_curve_points, trapezoid


def row(*values) -> np.ndarray:
    """A 1xN map."""
    return np.array([values], dtype=np.float64)


def assert_curve(curve, fprs, pros):
    np.testing.assert_allclose(curve[0], fprs, atol=1e-12)
    np.testing.assert_allclose(curve[1], pros, atol=1e-12)


# ----------------------------------------------------------------------------- trapezoid

def test_trapezoid_interpolates_at_limit():
    # Points (0,0), (0.2,0.5), (0.4,1.0), limit 0.3:
    #   [0, 0.2]:   0.5 * (0 + 0.5) * 0.2 = 0.05
    #   y(0.3) = 0.5 + (1.0 - 0.5) * (0.3 - 0.2) / 0.2 = 0.75
    #   [0.2, 0.3]: 0.5 * (0.5 + 0.75) * 0.1 = 0.0625
    #   area = 0.1125; normalised by the limit: 0.1125 / 0.3 = 0.375
    x, y = [0.0, 0.2, 0.4], [0.0, 0.5, 1.0]
    assert trapezoid(x, y, x_max=0.3) == pytest.approx(0.1125)
    assert trapezoid(x, y, x_max=0.3) / 0.3 == pytest.approx(0.375)
    # x_max on a point: only [0, 0.2] -> 0.05.  No limit: 0.05 + 0.5 * (0.5 + 1.0) * 0.2 = 0.2.
    assert trapezoid(x, y, x_max=0.2) == pytest.approx(0.05)
    assert trapezoid(x, y) == pytest.approx(0.2)


def test_trapezoid_limit_outside_curve_is_silent():
    x, y = [0.1, 0.2, 0.4], [0.0, 0.5, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Beyond the last point: the whole curve (official code would assert):
        # [0.1, 0.2]: 0.5 * (0 + 0.5) * 0.1 = 0.025; [0.2, 0.4]: 0.5 * (0.5 + 1) * 0.2 = 0.15 -> 0.175
        assert trapezoid(x, y, x_max=0.9) == pytest.approx(0.175)
        # Before the first point: nothing to integrate.
        assert trapezoid(x, y, x_max=0.05) == 0.0


def test_trapezoid_drops_non_finite_with_warning():
    # (0.2, nan) dropped -> points (0,0), (0.4,1): area 0.5 * 1 * 0.4 = 0.2
    with pytest.warns(RuntimeWarning, match="finite"):
        assert trapezoid([0.0, 0.2, 0.4], [0.0, np.nan, 1.0]) == pytest.approx(0.2)


def test_trapezoid_rejects_bad_input():
    with pytest.raises(CmdrError, match="ascending"):
        trapezoid([0.0, 0.3, 0.2], [0.0, 1.0, 1.0])
    with pytest.raises(CmdrError, match=r"\(3,\) and \(2,\)"):
        trapezoid([0.0, 0.3, 0.2], [0.0, 1.0])


# ----------------------------------------------------------------------------- PRO curve

def test_single_region_curve_and_areas():
    # gt [1 1 0 0 0] (one region of 2 px, 3 ok px); scores [.9 .5 .7 .3 .1].
    # Descending: .9 region (PRO 1/2) | .7 ok (FPR 1/3) | .5 region (PRO 1) | .3 ok (2/3) | .1 ok (1)
    # Curve: (0,0) (0,.5) (1/3,.5) (1/3,1) (2/3,1) (1,1) + appended (1,1).
    gt, amap = row(1, 1, 0, 0, 0), row(0.9, 0.5, 0.7, 0.3, 0.1)
    curve = pro_curve([gt], [amap])
    assert_curve(curve, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1, 1], [0, 0.5, 0.5, 1, 1, 1, 1])
    # limit 0.3: y(0.3) interpolated on (0,.5)-(1/3,.5) = .5 -> area .5 * .3 = .15 -> / .3 = 0.5
    assert aupro([gt], [amap], 0.3) == pytest.approx(0.5)
    # limit 0.5: [0,1/3] at .5 -> 1/6; vertical jump 0; [1/3, .5] at 1 -> 1/6; total 1/3 / .5 = 2/3
    assert aupro([gt], [amap], 0.5) == pytest.approx(2 / 3)
    # limit 1: 1/6 + [1/3, 1] at 1 -> 2/3; total 5/6
    assert aupro([gt], [amap], 1.0) == pytest.approx(5 / 6)


def test_regions_weighted_equally_not_by_pixels():
    # gt [1 0 1 1 1 0]: region A = {0} (1 px), region B = {2,3,4} (3 px); ok px 1 and 5.
    # scores [.9 .5 .8 .2 .1 .3]. Each region contributes 1/size / 2 regions per pixel:
    #   .9 A -> PRO 1/2 | .8 B -> 1/2 + 1/6 = 2/3 | .5 ok -> FPR 1/2 | .3 ok -> FPR 1
    #   .2 B -> 5/6 | .1 B -> 1.
    # (Pixel-weighted would give 1/4 after the first pixel.)
    gt, amap = row(1, 0, 1, 1, 1, 0), row(0.9, 0.5, 0.8, 0.2, 0.1, 0.3)
    assert_curve(pro_curve([gt], [amap]),
                 [0, 0, 0, 0.5, 1, 1, 1, 1], [0, 0.5, 2 / 3, 2 / 3, 2 / 3, 5 / 6, 1, 1])
    # limit 0.3: vertical segments at FPR 0 add nothing; y(0.3) on (0,2/3)-(.5,2/3) = 2/3
    #   -> area 0.3 * 2/3 -> normalised 2/3
    assert aupro([gt], [amap], 0.3) == pytest.approx(2 / 3)


def test_tied_scores_form_one_curve_point():
    # gt [1 1 0 0]; scores [.8 .5 .5 .2]: the region pixel and the ok pixel at .5 enter together.
    #   .8 -> (0, 1/2) | .5 (both) -> (1/2, 1) | .2 -> (1, 1)
    # Curve (0,0) (0,.5) (.5,1) (1,1) (1,1).
    # limit 0.3: y(0.3) = .5 + .5 * .3/.5 = .8; area .5 * (.5 + .8) * .3 = .195; / .3 = 0.65.
    # (Splitting the tie would give 1.0 (region first) or 0.5 (ok pixel first).)
    gt, amap = row(1, 1, 0, 0), row(0.8, 0.5, 0.5, 0.2)
    assert_curve(pro_curve([gt], [amap]), [0, 0, 0.5, 1, 1], [0, 0.5, 1, 1, 1])
    assert aupro([gt], [amap], 0.3) == pytest.approx(0.65)


def test_fpr_counts_good_images():
    # Defect image gt [1 0], scores [.9 .1]; good image gt [0 0], scores [.95 .05]. 3 ok px in total.
    #   .95 ok (good img) -> (1/3, 0) | .9 region -> (1/3, 1) | .1 -> (2/3, 1) | .05 -> (1, 1)
    # limit 0.5: [0,1/3] at PRO 0 -> 0; [1/3,.5] at 1 -> 1/6; / .5 = 1/3.
    # (Ignoring the good image: ok px {.1} only -> (0,1) first -> aupro 1.)
    gts = [row(1, 0), row(0, 0)]
    maps = [row(0.9, 0.1), row(0.95, 0.05)]
    assert_curve(pro_curve(gts, maps), [0, 1 / 3, 1 / 3, 2 / 3, 1, 1], [0, 0, 1, 1, 1, 1])
    assert aupro(gts, maps, 0.5) == pytest.approx(1 / 3)
    assert aupro(gts, maps, 0.3) == pytest.approx(0.0)


def test_diagonal_pixels_are_one_region():
    # gt (3x3):      scores:
    #   1 0 0          .9 .5 .5
    #   0 1 1          .5 .1 .1
    #   0 0 0          .5 .5 .5
    # 8-connectivity: one region of 3 px. After .9: PRO 1/3.
    # (4-connectivity would give regions {(0,0)} and {(1,1),(1,2)} -> PRO (1 + 0)/2 = 1/2.)
    #   .9 -> (0, 1/3) | .5 (all 6 ok px) -> (1, 1/3) | .1 -> (1, 1)
    # aupro@0.3 = 1/3 (flat at 1/3 from FPR 0 to 1).
    gt = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=bool)
    amap = np.array([[0.9, 0.5, 0.5], [0.5, 0.1, 0.1], [0.5, 0.5, 0.5]])
    assert_curve(pro_curve([gt], [amap]), [0, 0, 1, 1, 1], [0, 1 / 3, 1 / 3, 1, 1])
    assert aupro([gt], [amap], 0.3) == pytest.approx(1 / 3)


def test_pro_curve_matches_brute_force_on_random_data():
    rng = np.random.default_rng(7)
    gts = [ndimage.binary_dilation(rng.random((9, 11)) > 0.93, iterations=1) for _ in range(4)]
    gts.append(np.zeros((6, 5), bool))  # a good image of another size
    # Coarse scores (ties between images and classes) correlated with the masks.
    maps = [np.round(rng.random(g.shape) + 0.6 * g, 1) for g in gts]
    fprs, pros = pro_curve(gts, maps)

    structure = np.ones((3, 3), int)
    regions = []
    for i, g in enumerate(gts):
        lab, n = ndimage.label(g, structure)
        regions += [(i, lab == k) for k in range(1, n + 1)]
    n_ok = sum((~g).sum() for g in gts)
    ref_f, ref_p = [0.0], [0.0]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        ref_f.append(sum(((m >= t) & ~g).sum() for g, m in zip(gts, maps)) / n_ok)
        ref_p.append(np.mean([(maps[i][r] >= t).mean() for i, r in regions]))
    ref_f.append(1.0)
    ref_p.append(1.0)
    assert len(regions) >= 3
    np.testing.assert_allclose(fprs, ref_f, atol=1e-12)
    np.testing.assert_allclose(pros, ref_p, atol=1e-12)


# ----------------------------------------------------------------------------- compute_metrics

def test_perfect_and_inverse_separation():
    gts = np.zeros((4, 5, 5), bool)
    gts[1, 1:3, 1:3] = True
    gts[2, 4, 0] = True
    gts[3, 0:2, 3:5] = True
    rng = np.random.default_rng(1)
    noise = rng.random(gts.shape) * 0.4
    perfect = noise + gts  # every defect pixel (>= 1) above every ok pixel (< 0.4)
    m = compute_metrics(gts, perfect)
    assert list(m) == ["i_auroc", "p_auroc", "aupro@0.3", "aupro@0.1", "aupro@0.05", "aupro@0.01", "aupro_paper@0.3"]
    assert all(isinstance(v, float) for v in m.values())
    for v in m.values():
        assert v == pytest.approx(1.0)
    # Inverse: every ok pixel scores above every defect pixel; the good image has the highest max.
    # PRO stays 0 until FPR reaches 1, so every aupro is 0; both AUROCs are 0.
    inverse = np.where(gts, noise, 1.0 + noise)
    inverse[0] += 1.0
    m = compute_metrics(gts, inverse, image_scores=[9.0, 1.0, 2.0, 3.0])
    for v in m.values():
        assert v == pytest.approx(0.0)


def test_defaults_labels_scores_and_pro_maps():
    # Image scores default to each map's max: [.2, .9, .6] with labels [0, 1, 1] -> I-AUROC 1.
    # Explicit labels [1, 0, 1] with the same scores: pairs (pos, neg) = (.2 vs .9, .6 vs .9) -> 0.
    gts = [row(0, 0), row(1, 0), row(0, 1)]
    maps = [row(0.2, 0.1), row(0.9, 0.3), row(0.4, 0.6)]
    assert compute_metrics(gts, maps)["i_auroc"] == pytest.approx(1.0)
    assert compute_metrics(gts, maps, labels=[1, 0, 1])["i_auroc"] == pytest.approx(0.0)
    assert compute_metrics(gts, maps, image_scores=[0.5, 0.4, 0.6])["i_auroc"] == pytest.approx(0.5)
    # pro_maps replaces the maps for AUPRO only: inverted pro maps give AUPRO 0, P-AUROC unchanged.
    inv = [1.0 - m for m in maps]
    m = compute_metrics(gts, maps, pro_maps=inv, fpr_limits=(0.3,))
    assert m["aupro@0.3"] == pytest.approx(0.0)
    assert m["p_auroc"] == pytest.approx(compute_metrics(gts, maps)["p_auroc"])
    assert compute_metrics(gts, maps)["aupro@0.3"] == pytest.approx(1.0)


def test_auroc_matches_sklearn_on_random_data():
    rng = np.random.default_rng(3)
    gts = rng.random((12, 16, 16)) > 0.9
    gts[:4] = False
    maps = rng.random(gts.shape) + 0.3 * gts
    m = compute_metrics(gts, maps)
    labels = gts.reshape(12, -1).any(1)
    assert m["i_auroc"] == pytest.approx(roc_auc_score(labels, maps.reshape(12, -1).max(1)), abs=1e-12)
    assert m["p_auroc"] == pytest.approx(roc_auc_score(gts.ravel(), maps.ravel()), abs=1e-6)
    assert 0.5 < m["p_auroc"] < 1.0


def test_undefined_metrics_are_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Only good images: no positive image, pixel or region.
        m = compute_metrics([row(0, 0), row(0, 0)], [row(0.1, 0.2), row(0.3, 0.4)])
        assert all(math.isnan(v) for v in m.values())
        # Only defect pixels: no negative image or pixel -> FPR undefined.
        m = compute_metrics([row(1, 1)], [row(0.1, 0.2)])
        assert all(math.isnan(v) for v in m.values())
        # Only defect images but ok pixels exist: I-AUROC undefined, the rest defined.
        m = compute_metrics([row(1, 0), row(0, 1)], [row(0.9, 0.1), row(0.2, 0.8)])
        assert math.isnan(m["i_auroc"])
        assert m["p_auroc"] == pytest.approx(1.0)
        assert m["aupro@0.3"] == pytest.approx(1.0)
        fpr, tpr = roc_curve_points([0, 0], [0.1, 0.2])
        assert np.isnan(fpr).all() and np.isnan(tpr).all()


def test_roc_curve_points():
    # labels [0 0 1 1], scores [.1 .4 .35 .8]: thresholds .8 -> (0, .5), .4 -> (.5, .5),
    # .35 -> (.5, 1), .1 -> (1, 1), after the (0, 0) start; no point is collinear, so sklearn keeps all.
    fpr, tpr = roc_curve_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])


def test_input_validation():
    with pytest.raises(CmdrError, match=r"gt_masks\[1\] has shape \(2, 3\).*anomaly_maps\[1\] has shape \(3, 2\)"):
        compute_metrics([np.zeros((2, 3)), np.zeros((2, 3))], [np.zeros((2, 3)), np.zeros((3, 2))])
    with pytest.raises(CmdrError, match="2 masks but anomaly_maps has 1"):
        compute_metrics([np.zeros((2, 3))] * 2, [np.zeros((2, 3))])
    with pytest.raises(CmdrError, match="pro_maps\\[0\\] has shape"):
        compute_metrics([np.zeros((2, 3))], [np.zeros((2, 3))], pro_maps=[np.zeros((3, 3))])
    with pytest.raises(CmdrError, match="labels has 1 entries but there are 2"):
        compute_metrics([np.zeros((2, 3))] * 2, [np.zeros((2, 3))] * 2, labels=[0])
    with pytest.raises(CmdrError, match="non-finite"):
        compute_metrics([np.zeros((1, 2))], [row(0.1, np.nan)])
    with pytest.raises(CmdrError, match="limit"):
        aupro([row(1, 0)], [row(0.9, 0.1)], 0.0)


# ----------------------------------------------------------------------------- the paper's sampled AUPRO

def _compute_pro_loop(gts, maps, num_thresholds):
    """The sampled PRO curve of the paper's reference code (M3DM/CFM's AUPRO utility), one threshold at a time."""
    ok = np.sort(np.concatenate([m[g == 0] for g, m in zip(gts, maps)]))
    comps = []
    for g, m in zip(gts, maps):
        lab, n = ndimage.label(g, structure=np.ones((3, 3), int))
        comps += [np.sort(m[lab == k]) for k in range(1, n + 1)]
    fprs, pros = [1.0], [1.0]
    for pos in np.linspace(0, len(ok) - 1, num=num_thresholds, dtype=int):
        t = ok[pos]
        fprs.append(1.0 - (pos + 1) / len(ok))
        pros.append(sum(1.0 - (c <= t).sum() / len(c) for c in comps) / len(comps))
    return np.array(fprs[::-1]), np.array(pros[::-1])


def test_sampled_pro_curve_matches_the_reference_loop():
    from cmdr_ros.metrics import PAPER_PRO_THRESHOLDS, aupro_paper, sampled_pro_curve

    rng = np.random.default_rng(7)
    gts = rng.random((8, 24, 24)) > 0.93
    gts[:3] = False
    maps = np.round(rng.random(gts.shape) + 0.4 * gts, 2)  # rounded: ties between thresholds
    fprs, pros = sampled_pro_curve(gts, maps)
    ref = _compute_pro_loop(gts, maps, 99)
    assert PAPER_PRO_THRESHOLDS == 99 and fprs.shape == (100,)
    np.testing.assert_allclose(fprs, ref[0], atol=1e-12)
    np.testing.assert_allclose(pros, ref[1], atol=1e-12)
    got = aupro_paper(gts, maps, 0.3)
    assert got == pytest.approx(trapezoid(*ref, x_max=0.3) / 0.3, abs=1e-12)
    # not the exact curve: the sampled one integrates lower (linear between samples of a concave curve)
    assert got < aupro(gts, maps, 0.3)
    assert aupro_paper(gts, maps, 0.01) < aupro(gts, maps, 0.01)


def test_compute_metrics_reports_exact_and_paper_aupro():
    from cmdr_ros.metrics import METRIC_KEYS, aupro_paper, format_table

    rng = np.random.default_rng(8)
    gts = rng.random((6, 16, 16)) > 0.9
    gts[:2] = False
    maps = rng.random(gts.shape) + 0.5 * gts
    m = compute_metrics(gts, maps)
    assert {"aupro@0.3", "aupro_paper@0.3"} <= set(m) <= set(METRIC_KEYS)
    assert m["aupro_paper@0.3"] == pytest.approx(aupro_paper(gts, maps, 0.3))
    assert m["aupro@0.3"] == pytest.approx(aupro(gts, maps, 0.3)) and m["aupro@0.3"] != m["aupro_paper@0.3"]
    assert "aupro_paper@0.3" in format_table({"c": m}, m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(compute_metrics([row(0, 0)], [row(0.1, 0.2)])["aupro_paper@0.3"])
