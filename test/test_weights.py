"""Weight loading: the official Point-MAE layout round-trips exactly; every wrong, missing or damaged
file raises CmdrError instead of leaving random weights; DINO ViT-B/8 files are checked the same way."""
import hashlib

import pytest
import timm
import torch

from cmdr_ros import CmdrError
from cmdr_ros.model.pointmae import PointMAEEncoder
from cmdr_ros.model.weights import (DINO_FILENAME, POINTMAE_FILENAME, POINTMAE_SHA256, create_dino_vitb8,
                                    create_random_vit, load_pointmae_weights, sha256_file)

SMALL = dict(trans_dim=48, depth=3, num_heads=3, num_group=32, group_size=8, encoder_dims=48, fetch_idx=(0, 1, 2))


def _small(seed: int) -> PointMAEEncoder:
    torch.manual_seed(seed)
    model = PointMAEEncoder(**SMALL)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the buffers matter too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _official(model: PointMAEEncoder, prefix: str = "MAE_encoder.") -> dict:
    """The Point-MAE release layout: encoder under base_model/MAE_encoder., plus decoder and training state."""
    base = {prefix + k: v for k, v in model.state_dict().items()}
    base["mask_token"] = torch.zeros(1, 1, 48)
    base["MAE_decoder.norm.weight"] = torch.ones(48)
    return {"base_model": base, "optimizer": {"state": {}, "param_groups": []}, "epoch": 300,
            "metrics": {"acc": 0.0}}


@pytest.fixture
def pts():
    return torch.rand(1, 400, 3, generator=torch.Generator().manual_seed(0)) + 0.5


def test_sha256_file(tmp_path):
    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = bytes(range(256)) * 10_000  # several read blocks
    p.write_bytes(big)
    assert sha256_file(p) == hashlib.sha256(big).hexdigest()


@pytest.mark.parametrize("prefix", ["MAE_encoder.", "module.MAE_encoder."])
def test_pointmae_official_layout_round_trip(tmp_path, pts, prefix):
    src, dst = _small(0), _small(1)
    path = tmp_path / POINTMAE_FILENAME
    torch.save(_official(src, prefix), path)
    with torch.inference_mode():
        before = dst(pts)[1]
        assert not torch.allclose(before, src(pts)[1])
        dst.train()
        sha = load_pointmae_weights(dst, path, expected_sha256=None)
        assert sha == sha256_file(path) and not dst.training
        assert torch.equal(dst(pts)[1], src(pts)[1])
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    # the matching hash passes the hash check
    assert load_pointmae_weights(_small(2), path, expected_sha256=sha) == sha


def test_pointmae_bare_encoder_state_dict_loads(tmp_path, pts):
    src, dst = _small(0), _small(1)
    path = tmp_path / "encoder_only.pth"
    torch.save(src.state_dict(), path)
    load_pointmae_weights(dst, path, expected_sha256=None)
    with torch.inference_mode():
        assert torch.equal(dst(pts)[1], src(pts)[1])


def test_pointmae_sha_mismatch(tmp_path):
    path = tmp_path / POINTMAE_FILENAME
    torch.save(_official(_small(0)), path)
    with pytest.raises(CmdrError) as e:
        load_pointmae_weights(_small(1), path)  # default: the official release hash
    assert POINTMAE_SHA256 in str(e.value) and sha256_file(path) in str(e.value) and str(path) in str(e.value)


def test_pointmae_missing_file(tmp_path):
    with pytest.raises(CmdrError, match=f"not found at .*{POINTMAE_FILENAME}.*{POINTMAE_SHA256}"):
        load_pointmae_weights(_small(0), tmp_path / POINTMAE_FILENAME)


def test_pointmae_missing_keys_and_wrong_shapes(tmp_path):
    ckpt = _official(_small(0))
    del ckpt["base_model"]["MAE_encoder.blocks.blocks.1.mlp.fc1.weight"]
    path = tmp_path / "missing.pth"
    torch.save(ckpt, path)
    with pytest.raises(CmdrError, match="missing blocks.blocks.1.mlp.fc1.weight"):
        load_pointmae_weights(_small(1), path, expected_sha256=None)

    wider = PointMAEEncoder(**{**SMALL, "trans_dim": 60, "encoder_dims": 60})
    path = tmp_path / "wider.pth"
    torch.save(_official(wider), path)
    with pytest.raises(CmdrError, match=r"second_conv.3.weight has shape \(60, 512, 1\), expected \(48, 512, 1\)"):
        load_pointmae_weights(_small(1), path, expected_sha256=None)

    deeper = PointMAEEncoder(**{**SMALL, "depth": 4})
    path = tmp_path / "deeper.pth"
    torch.save(_official(deeper), path)
    with pytest.raises(CmdrError, match="unexpected blocks.blocks.3"):
        load_pointmae_weights(_small(1), path, expected_sha256=None)

    # a checkpoint of something else entirely (no encoder key matches)
    path = tmp_path / "other.pth"
    torch.save({"base_model": {"MAE_encoder.foo": torch.zeros(3)}}, path)
    with pytest.raises(CmdrError, match="does not fit the Point-MAE encoder"):
        load_pointmae_weights(_small(1), path, expected_sha256=None)


def test_pointmae_failed_load_leaves_no_partial_weights(tmp_path):
    ckpt = _official(_small(0))
    del ckpt["base_model"]["MAE_encoder.norm.bias"]
    path = tmp_path / "bad.pth"
    torch.save(ckpt, path)
    dst = _small(1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CmdrError):
        load_pointmae_weights(dst, path, expected_sha256=None)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_pointmae_non_checkpoint_file(tmp_path):
    path = tmp_path / POINTMAE_FILENAME
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
                     .numpy().tobytes())
    with pytest.raises(CmdrError, match="not a readable PyTorch checkpoint"):
        load_pointmae_weights(_small(0), path, expected_sha256=None)
    torch.save([1, 2, 3], path)
    with pytest.raises(CmdrError, match="not a Point-MAE checkpoint"):
        load_pointmae_weights(_small(0), path, expected_sha256=None)


# --- DINO ViT-B/8 -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vitb8_state():
    """Random ViT-B/8 weights in the DINO release layout (plain state dict, timm key names, no head).

    Filled with seeded normal noise rather than timm's initialiser: same layout, a fraction of the time."""
    with torch.device("meta"):
        layout = timm.create_model("vit_base_patch8_224", pretrained=False, num_classes=0).state_dict()
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=g) for k, v in layout.items()}


def test_dino_missing_file(tmp_path):
    with pytest.raises(CmdrError, match=f"not found at .*{DINO_FILENAME}"):
        create_dino_vitb8(tmp_path / DINO_FILENAME)


def test_dino_correct_file_reproduces_weights(tmp_path, vitb8_state):
    assert "cls_token" in vitb8_state and "blocks.0.attn.qkv.weight" in vitb8_state
    assert not any(k.startswith("head") for k in vitb8_state)
    path = tmp_path / DINO_FILENAME
    torch.save(vitb8_state, path)
    model = create_dino_vitb8(path)
    assert not model.training and model.num_classes == 0
    loaded = model.state_dict()
    assert loaded.keys() == vitb8_state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in vitb8_state.items())
    assert sum(p.numel() for p in model.parameters()) == 85_807_872


def test_dino_other_img_size_resamples_only_pos_embed(tmp_path, vitb8_state):
    path = tmp_path / DINO_FILENAME
    torch.save(vitb8_state, path)
    model = create_dino_vitb8(path, img_size=112)
    assert model.pos_embed.shape == (1, 1 + 14 * 14, 768)
    torch.testing.assert_close(model.pos_embed[:, 0], vitb8_state["pos_embed"][:, 0])  # CLS position kept
    assert torch.equal(model.state_dict()["blocks.11.mlp.fc2.weight"], vitb8_state["blocks.11.mlp.fc2.weight"])


def test_dino_wrong_files(tmp_path, vitb8_state):
    small = create_random_vit(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, seed=0)
    path = tmp_path / "small.pth"
    torch.save(small.state_dict(), path)
    with pytest.raises(CmdrError, match="is not a DINO ViT-B/8 checkpoint: missing blocks.1"):
        create_dino_vitb8(path)

    # a ViT-B/16 layout (timm's checkpoint filter would silently resample it into the B/8 model) that is
    # also a classifier (extra head): not the DINO ViT-B/8 backbone
    wrong = dict(vitb8_state, **{"head.weight": torch.zeros(1000, 768), "head.bias": torch.zeros(1000)})
    wrong["patch_embed.proj.weight"] = torch.zeros(768, 3, 16, 16)
    wrong["pos_embed"] = torch.zeros(1, 197, 768)
    path = tmp_path / "b16_classifier.pth"
    torch.save(wrong, path)
    with pytest.raises(CmdrError, match="is not a DINO ViT-B/8 checkpoint") as e:
        create_dino_vitb8(path)
    for problem in ("unexpected head.weight", "pos_embed has shape (1, 197, 768), expected (1, 785, 768)",
                    "patch_embed.proj.weight has shape (768, 3, 16, 16), expected (768, 3, 8, 8)"):
        assert problem in str(e.value)

    path = tmp_path / DINO_FILENAME
    path.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(CmdrError, match="not a readable PyTorch checkpoint"):
        create_dino_vitb8(path)
