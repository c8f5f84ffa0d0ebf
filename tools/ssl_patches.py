"""An in-domain self-supervised local point feature, trained on the good parts' clouds only (issue #27, 3D-only).

Per valid pixel of the 128x128 xyz map: its 9x9 neighbourhood in a local frame (centred on the point, z along the
neighbourhood's PCA normal facing the sensor) -> 81 heights (0 where unmeasured) + 81 validity flags. A small MLP
autoencoder (162 -> 128 -> 16 -> 128 -> 81), trained to rebuild the heights from an input with 30 % of the
neighbours dropped (masked autoencoding), on the 60 training parts. Per test part: each point's 16-d code and its
reconstruction error; anomaly per point = distance of its code to the nearest training code (a memory bank of
20000 codes) and, separately, the reconstruction error; pooled to the 64x64 grid (max per cell), smoothed by a 5x5
box; three image scores of each map (max / sqrt(mean of non-zero) as the preset's, max, mean), I-AUROC on the halves
of ``eval_variants.py``. Measured in docs/quality.md ("3D-only: other image scores, ..."); an experiment, not a
backbone of the package.

    PYTHONPATH=$PWD:$PWD/tools python tools/ssl_patches.py SIDE K [DATA [CACHE]]   # e.g. 128 9: a 128x128 xyz map, 9x9 patches
"""
import sys, time, dataclasses
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from eval_variants import half_a
from cmdr_ros.config import preset
from cmdr_ros.data.mvtec3d import MVTec3DClass
from cmdr_ros.data.samples import iter_split, make_cache
from cmdr_ros.model import fusion
torch.manual_seed(0); rng = np.random.default_rng(0)
DATA = sys.argv[3] if len(sys.argv) > 3 else "../shared/data/mvtec3d_cable_gland_dev_large/cable_gland"
SIDE = int(sys.argv[1]); cfg = dataclasses.replace(preset("lite", "3d"), xyz_size=SIDE)
data = MVTec3DClass(DATA)
cache = make_cache(cfg, sys.argv[4] if len(sys.argv) > 4 else None, False)
K = int(sys.argv[2]); R = K // 2

def patches(inp):
    xyz = inp.xyz.numpy(); v = inp.points_valid.numpy()
    pad = np.pad(xyz, ((R, R), (R, R), (0, 0))); pv = np.pad(v, R)
    ys, xs = np.nonzero(v)
    idx_y = ys[:, None] + np.arange(K)[None]; idx_x = xs[:, None] + np.arange(K)[None]
    P = pad[idx_y[:, :, None], idx_x[:, None, :]].reshape(len(ys), K * K, 3)
    M = pv[idx_y[:, :, None], idx_x[:, None, :]].reshape(len(ys), K * K)
    c = xyz[ys, xs]
    Q = (P - c[:, None]) * M[..., None]
    n = np.maximum(M.sum(1), 1)[:, None, None]
    mu = Q.sum(1, keepdims=True) / n
    C = np.einsum("nki,nkj->nij", (Q - mu) * M[..., None], (Q - mu) * M[..., None]) / n
    w, V = np.linalg.eigh(C)
    nrm = V[:, :, 0]
    nrm[(nrm * c).sum(1) > 0] *= -1
    h = (Q * nrm[:, None]).sum(-1) * M
    scale = np.median(np.linalg.norm(Q[:, [K * R + R + 1, K * R + R - 1]], axis=-1)) + 1e-9
    return (h / scale).astype(np.float32), M.astype(np.float32), ys, xs

def load(split):
    out = []
    for ls in iter_split(data, split, cfg, cache, False):
        out.append((ls, *patches(ls.inp)))
    return out
t0 = time.time()
train = load("train"); test = load("test")
print("patches", sum(len(t[1]) for t in train), "in", round(time.time() - t0, 1), "s", flush=True)
H = torch.from_numpy(np.concatenate([t[1] for t in train])); Mk = torch.from_numpy(np.concatenate([t[2] for t in train]))
sd = float(H[Mk > 0].std()); H = H / sd
class AE(nn.Module):
    def __init__(s):
        super().__init__()
        s.enc = nn.Sequential(nn.Linear(2 * K * K, 128), nn.GELU(), nn.Linear(128, 16))
        s.dec = nn.Sequential(nn.Linear(16, 128), nn.GELU(), nn.Linear(128, K * K))
    def forward(s, h, m):
        z = s.enc(torch.cat([h * m, m], 1)); return z, s.dec(z)
ae = AE(); opt = torch.optim.Adam(ae.parameters(), 1e-3)
n = len(H)
for ep in range(8):
    perm = torch.randperm(n); tot = 0
    for i in range(0, n, 512):
        b = perm[i:i + 512]; h, m = H[b], Mk[b]
        keep = (torch.rand_like(m) > 0.3).float() * m
        _, rec = ae(h, keep)
        loss = (((rec - h) ** 2) * m).sum() / m.sum()
        opt.zero_grad(); loss.backward(); opt.step(); tot += float(loss.detach()) * len(b)
    print("epoch", ep, round(tot / n, 4), flush=True)
ae.eval()
with torch.no_grad():
    Z = torch.cat([ae(H[i:i + 4096], Mk[i:i + 4096])[0] for i in range(0, n, 4096)])
bank = Z[torch.from_numpy(rng.choice(n, 20000, replace=False))]
def maps(entry):
    ls, h, m, ys, xs = entry
    h = torch.from_numpy(h) / sd; m = torch.from_numpy(m)
    with torch.no_grad():
        z, rec = ae(h, m)
        knn = torch.cdist(z, bank).min(1).values
        err = (((rec - h) ** 2) * m).sum(1) / m.sum(1).clamp_min(1)
    out = {}
    for name, val in (("knn", knn), ("rec", err)):
        g = torch.zeros(SIDE, SIDE); g[torch.from_numpy(ys), torch.from_numpy(xs)] = val
        g = F.max_pool2d(g[None, None], SIDE // 64)[0, 0]
        out[name] = fusion.box_filter(g, 5, 1)
    return out
samples = [t[0].sample for t in test]; labels = np.array([s.label for s in samples])
a = half_a(samples, 27); halves = {"A": sorted(a), "B": sorted(set(range(len(test))) - a), "all": list(range(len(test)))}
M_ = [maps(t) for t in test]
for name in ("knn", "rec"):
    for sname, fn in (("max_norm", lambda f: float(fusion.image_score(f))), ("max", lambda f: float(f.max())),
                      ("mean", lambda f: float(f[f != 0].mean()))):
        s = np.array([fn(m[name]) for m in M_])
        print(name, sname, {h: round(roc_auc_score(labels[i], s[i]), 3) for h, i in halves.items()}, flush=True)
print("total", round(time.time() - t0, 1), "s")
