"""Point-MAE encoder: sampling/grouping maths against brute-force references, the official layout and
parameter count, interpolation weights, and the DINO token grid."""
import numpy as np
import pytest
import timm
import torch

from cmdr_ros.model.pointmae import (Attention, Encoder, Group, PointMAEEncoder, farthest_point_sample,
                                     interpolate_to_points, knn_indices)
from cmdr_ros.model.weights import create_random_vit, dino_patch_tokens

SMALL = dict(trans_dim=48, depth=3, num_heads=3, num_group=64, group_size=16, encoder_dims=48,
             fetch_idx=(0, 1, 2))


def fps_reference(xyz: np.ndarray, npoint: int, start: int = 0) -> np.ndarray:
    """pointnet2's CUDA kernel, one point at a time (float32, x+y+z summed in order)."""
    n = len(xyz)
    temp = np.full(n, 1e10, np.float32)
    out, old = [start], start
    for _ in range(1, npoint):
        best, besti = np.float32(-1), 0
        for k in range(n):
            x, y, z = xyz[k]
            if x * x + y * y + z * z <= 1e-3:
                continue
            d = np.float32((x - xyz[old, 0]) ** 2) + np.float32((y - xyz[old, 1]) ** 2) \
                + np.float32((z - xyz[old, 2]) ** 2)
            temp[k] = min(d, temp[k])
            if temp[k] > best:
                best, besti = temp[k], k
        out.append(besti)
        old = besti
    return np.array(out)


def test_fps_matches_bruteforce_reference():
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(2, 120, 3, generator=g) + 0.5
    got = farthest_point_sample(xyz, 25)
    assert got.dtype == torch.long and got.shape == (2, 25)
    for b in range(2):
        np.testing.assert_array_equal(got[b].numpy(), fps_reference(xyz[b].numpy(), 25))
    np.testing.assert_array_equal(farthest_point_sample(xyz, 25, start_idx=7)[0].numpy(),
                                  fps_reference(xyz[0].numpy(), 25, start=7))


def test_fps_ties_origin_and_too_few_points():
    # from (1,1,1) the points 1 and 2 are both 2 away: the tie goes to the lower index; the origin point
    # (index 3, padding in the kernel's convention) is never chosen although it is far away
    xyz = torch.tensor([[[1.0, 1, 1], [3, 1, 1], [-1, 1, 1], [0, 0, 0]]])
    assert farthest_point_sample(xyz, 3)[0].tolist() == [0, 1, 2]
    # the kernel skips every point within sqrt(1e-3) of the origin, not only the origin itself
    near = torch.tensor([[[1.0, 1, 1], [0.02, 0.02, 0.0], [-1, 1, 1], [0.1, 0.1, 0.1]]])
    assert farthest_point_sample(near, 3)[0].tolist() == [0, 2, 3]
    np.testing.assert_array_equal(farthest_point_sample(near, 3)[0].numpy(), fps_reference(near[0].numpy(), 3))
    # asking for more centres than points: all points first, then the lowest index repeats
    assert farthest_point_sample(xyz, 6)[0].tolist() == [0, 1, 2, 0, 0, 0]
    np.testing.assert_array_equal(farthest_point_sample(xyz, 6)[0].numpy(), fps_reference(xyz[0].numpy(), 6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fps_and_knn_same_on_cuda():
    xyz = torch.rand(2, 3000, 3, generator=torch.Generator().manual_seed(1))
    idx = farthest_point_sample(xyz, 64)
    assert torch.equal(farthest_point_sample(xyz.cuda(), 64).cpu(), idx)
    centers = xyz[torch.arange(2)[:, None], idx]
    assert torch.equal(knn_indices(xyz.cuda(), centers.cuda(), 16).cpu(), knn_indices(xyz, centers, 16))


def test_knn_matches_sort_and_chunking():
    g = torch.Generator().manual_seed(2)
    ref, query = torch.rand(2, 200, 3, generator=g), torch.rand(2, 30, 3, generator=g)
    got = knn_indices(ref, query, 10)
    d = ((query.double().numpy()[:, :, None] - ref.double().numpy()[:, None]) ** 2).sum(-1)
    np.testing.assert_array_equal(got.numpy(), np.argsort(d, axis=-1)[..., :10])
    assert torch.equal(knn_indices(ref, query, 10, chunk_elems=2 * 200 * 7), got)  # 7 queries per chunk
    # fewer points than k: all points, nearest first, repeated cyclically
    few = knn_indices(ref[:, :4], query, 6)
    near = np.argsort(d[:, :, :4], axis=-1)
    np.testing.assert_array_equal(few.numpy(), near[..., [0, 1, 2, 3, 0, 1]])


def test_parameter_counts_match_the_reference_modules():
    assert sum(p.numel() for p in PointMAEEncoder().parameters()) == 21_825_024
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch8_224", pretrained=False, num_classes=0)
    assert sum(p.numel() for p in vit.parameters()) == 85_807_872


def test_official_parameter_names():
    keys = set(PointMAEEncoder(**SMALL).state_dict())
    for k in ("encoder.first_conv.0.weight", "encoder.first_conv.1.running_var", "encoder.second_conv.3.bias",
              "pos_embed.0.weight", "pos_embed.2.bias", "blocks.blocks.2.attn.qkv.weight",
              "blocks.blocks.0.attn.proj.bias", "blocks.blocks.1.mlp.fc2.weight", "blocks.blocks.0.norm2.bias",
              "norm.weight"):
        assert k in keys
    assert "blocks.blocks.0.attn.qkv.bias" not in keys


def test_group_neighbourhoods_are_centred_knn_of_fps_centres():
    xyz = torch.rand(1, 300, 3, generator=torch.Generator().manual_seed(3)) + 0.2
    neighborhood, center = Group(num_group=8, group_size=5)(xyz)
    assert neighborhood.shape == (1, 8, 5, 3) and center.shape == (1, 8, 3)
    assert torch.equal(center[0], xyz[0, farthest_point_sample(xyz, 8)[0]])
    assert torch.all(neighborhood[:, :, 0] == 0)  # each centre is its own nearest neighbour
    d = torch.cdist(center[0], xyz[0])
    for g in range(8):
        expected = xyz[0, d[g].argsort()[:5]] - center[0, g]
        torch.testing.assert_close(neighborhood[0, g], expected)


def test_attention_equals_explicit_softmax():
    torch.manual_seed(0)
    attn = Attention(12, num_heads=3)
    x = torch.randn(2, 7, 12)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 3, 4).permute(2, 0, 3, 1, 4)
    weights = ((q @ k.transpose(-2, -1)) * 4 ** -0.5).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 7, 12))
    torch.testing.assert_close(attn(x), expected)


def test_encoder_eval_chunking_is_exact():
    torch.manual_seed(0)
    enc = Encoder(24).eval()
    groups = torch.randn(2, 10, 16, 3)
    full = enc(groups)
    enc.eval_chunk = 3
    torch.testing.assert_close(enc(groups), full)
    assert full.shape == (2, 10, 24)


def test_small_encoder_forward_shapes_fetch_and_determinism():
    torch.manual_seed(0)
    model = PointMAEEncoder(**SMALL).eval()
    pts = torch.rand(2, 500, 3, generator=torch.Generator().manual_seed(4)) + 0.3
    with torch.inference_mode():
        centers, feats = model(pts)
        centers2, feats2 = model(pts)
        # recompute block by block: features are norm(block i output) for i in fetch_idx, concatenated
        neighborhood, center = model.group_divider(pts)
        x, pos = model.encoder(neighborhood), model.pos_embed(center)
        expected = []
        for block in model.blocks.blocks:
            x = block(x + pos)
            expected.append(model.norm(x))
    assert centers.shape == (2, 64, 3) and feats.shape == (2, 64, 3 * 48) and model.out_dim == 144
    assert torch.equal(centers, centers2) and torch.equal(feats, feats2)
    torch.testing.assert_close(feats, torch.cat(expected, dim=-1))
    # a different fetch_idx picks other blocks in the given order
    model.fetch_idx = (2, 0)
    with torch.inference_mode():
        torch.testing.assert_close(model(pts)[1], torch.cat([expected[2], expected[0]], dim=-1))


def test_interpolation_weights_inverse_squared_distance():
    centers = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]])
    points = torch.tensor([[0.5, 0, 0], [1, 0, 0]])
    idx, w = interpolate_to_points(points, centers)
    assert idx.shape == (2, 3) and w.shape == (2, 3)
    # point 0: squared distances 0.25, 0.25, 1.25 -> 1/d2 = 4, 4, 0.8
    assert sorted(idx[0, :2].tolist()) == [0, 1] and idx[0, 2] == 2
    torch.testing.assert_close(w[0], torch.tensor([4 / 8.8, 4 / 8.8, 0.8 / 8.8]))
    # a point on a centre takes (almost) all of its weight
    assert idx[1, 0] == 1 and w[1, 0] > 1 - 1e-6
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    many = torch.rand(100, 3, generator=torch.Generator().manual_seed(5))
    a, b = interpolate_to_points(many, many[:20]), interpolate_to_points(many, many[:20], chunk_elems=20 * 9)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_dino_patch_tokens_grid_on_small_random_vit():
    state = torch.random.get_rng_state()
    vit = create_random_vit(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert not vit.training
    same = create_random_vit(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(vit.state_dict().values(), same.state_dict().values()))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        grid = dino_patch_tokens(vit, x)
        tokens = vit.forward_features(x)
    assert grid.shape == (2, 16, 4, 4)
    # row-major patch order, CLS (token 0) dropped
    torch.testing.assert_close(grid[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])
    torch.testing.assert_close(grid[:, :, 3, 0], tokens[:, 1 + 3 * 4 + 0])


def _with_running_stats(enc: Encoder) -> Encoder:
    """Give the BatchNorm layers ShapeNet-like running statistics far from any frame's own."""
    g = torch.Generator().manual_seed(9)
    for bn in (enc.first_conv[1], enc.second_conv[1]):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 4 + 0.5)
    return enc


def test_frame_batchnorm_uses_the_frames_own_statistics():
    """bn 'frame' (the reference runs Point-MAE in train mode): BatchNorm normalises with the statistics of all the
    frame's groups at once, leaves the running statistics untouched, and is deterministic."""
    torch.manual_seed(0)
    enc = _with_running_stats(Encoder(24)).eval()
    groups = torch.randn(1, 10, 16, 3)
    buffers = {k: v.clone() for k, v in enc.state_dict().items()}
    running = enc(groups)
    enc.frame_stats = True
    enc.eval_chunk = 3  # no chunking with frame statistics: they are over all 10 groups
    frame = enc(groups)
    assert torch.equal(frame, enc(groups))  # deterministic
    assert not torch.allclose(frame, running, atol=1e-3)
    for k, v in enc.state_dict().items():  # running statistics (and the batch counter) unchanged
        assert torch.equal(v, buffers[k]), k
    # the same numbers as train-mode BatchNorm (the reference's), computed by a copy that may update its buffers
    import copy
    ref = copy.deepcopy(enc).train()
    ref.frame_stats = False
    torch.testing.assert_close(frame, ref(groups))
    # hand check of the first BatchNorm: per channel mean/biased variance over all groups and points
    x = enc.first_conv[0](groups.reshape(10, 16, 3).transpose(1, 2))
    bn = enc.first_conv[1]
    mean, var = x.mean(dim=(0, 2), keepdim=True), x.var(dim=(0, 2), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + bn.eps) * bn.weight[None, :, None] + bn.bias[None, :, None]
    torch.testing.assert_close(enc._run(enc.first_conv[:2], groups.reshape(10, 16, 3).transpose(1, 2)), expected)


def test_pointmae_backbone_bn_modes():
    from cmdr_ros import CmdrError
    from cmdr_ros.model.backbones import RandomPointMAE, build_backbone

    xyz = torch.rand(12, 12, 3, generator=torch.Generator().manual_seed(6)) + 0.3
    valid = torch.ones(12, 12, dtype=torch.bool)
    valid[:2] = False
    small = dict(num_group=16, group_size=8)
    run = RandomPointMAE(**small)
    frame = build_backbone("random_pointmae", "3d", options=small, bn="frame")
    assert run.bn == "running" and not run.encoder.encoder.frame_stats
    assert frame.bn == "frame" and frame.encoder.encoder.frame_stats and not frame.encoder.training
    _with_running_stats(run.encoder.encoder)
    frame.load_state_dict(run.state_dict())
    a, b = run.extract(xyz, valid), frame.extract(xyz, valid)
    assert torch.equal(a["idx"], b["idx"])  # same groups and interpolation, other BatchNorm statistics
    assert not torch.allclose(a["center_feats"], b["center_feats"], atol=1e-3)
    assert torch.equal(frame.extract(xyz, valid)["center_feats"], b["center_feats"])
    assert torch.equal(frame.state_dict()["encoder.encoder.first_conv.1.running_mean"],
                       run.state_dict()["encoder.encoder.first_conv.1.running_mean"])
    with pytest.raises(CmdrError, match="'fpfh' has no BatchNorm mode"):
        build_backbone("fpfh", "3d", bn="frame")
    with pytest.raises(CmdrError, match="as the backbone's `bn`"):
        build_backbone("random_pointmae", "3d", options={"bn": "frame"})
    with pytest.raises(CmdrError, match="unknown bn mode"):
        build_backbone("random_pointmae", "3d", bn="batch")


@pytest.mark.parametrize("grid,channels", [(96, 1152), (64, 66), (28, 5)])
def test_points_are_placed_and_pooled_as_the_reference_does(grid, channels):
    """``scatter_points_to_grid`` pools channels-last for speed; the result is bit-identical to the reference's
    layout: features scattered into [C, G*G], 3x3 average pool (stride 1), adaptive average pool to G."""
    from cmdr_ros.model.backbones import scatter_points_to_grid, scatter_points_to_grid_reference

    g = torch.Generator().manual_seed(grid)
    pix = torch.randperm(grid * grid, generator=g)[: grid * grid * 2 // 3]
    feats = torch.randn(len(pix), channels, generator=g)
    ref = scatter_points_to_grid_reference(feats, pix, grid)
    out = scatter_points_to_grid(feats, pix, grid)
    assert out.shape == (channels, grid, grid) and out.is_contiguous() and torch.equal(out, ref)
