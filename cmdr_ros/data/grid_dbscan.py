"""The largest DBSCAN cluster of a cloud, computed on grids of cells instead of neighbour lists.

Open3D's DBSCAN stores every point's eps-neighbour list (~1000 per point on a 400x400 MVTec frame: 2-3 s);
scikit-learn's does the same. The grid method reaches the same labels without listing neighbours: two cell
grids (fine side h = eps / (2 sqrt 3), coarse side 2h = eps / sqrt 3) give, from cell coordinates alone,
  * pairs certainly within eps: points in the same or 26-adjacent fine cells (|difference| < 2h per axis);
  * every pair possibly within eps: points in coarse cells at most 2 apart per axis (125 offsets);
and exact distances are computed only where those two disagree. Nothing here is a library routine because no
library offers DBSCAN with a neighbour-count shortcut; the loops below run over chunks or rounds, not points.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def columns(points: np.ndarray) -> np.ndarray:
    """Nx3 points -> contiguous 3xN float64: numpy reduces an Nx3 array along axis 0 ~20x slower than rows."""
    return np.ascontiguousarray(np.asarray(points).T, dtype=np.float64)


_SQRT3 = float(np.sqrt(3.0))
# cell sides shrunk by this factor so that rounding in floor(p / h) never puts a pair at >= eps into
# "certainly within eps" (its effect: borderline pairs get an exact test)
_GRID_SHRINK = 1 - 1e-6
_PAIR_CHUNK = 1 << 20  # point pairs whose distances are computed at once (~50 MB of temporaries)


def _cube(r: int) -> np.ndarray:
    g = np.arange(-r, r + 1)
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)


def _half(offsets: np.ndarray) -> np.ndarray:
    """The offsets after (0, 0, 0) in lexicographic order: each unordered cell pair once."""
    return offsets[[tuple(o) > (0, 0, 0) for o in offsets]]


_FINE_NEAR = _cube(1)
# fine offsets whose cells can hold a point within eps: gap between the cells at most 2 sqrt(3) h (= eps, shrunk)
_FINE_REACH = _cube(4)[(np.maximum(np.abs(_cube(4)) - 1, 0) ** 2).sum(axis=1) <= 12]
_COARSE_NEAR = _cube(2)


class _Grid:
    """Occupied cells of integer point coordinates ``ijk`` (3 x N): ``cell`` per point, ``counts`` and ``ijk``
    (ncells x 3) per cell, and lookups of neighbour cells up to ``reach`` cells away on each axis."""

    def __init__(self, ijk: np.ndarray, reach: int) -> None:
        n = ijk.shape[1]
        shifted = ijk - ijk.min(axis=1)[:, None]
        dims = shifted.max(axis=1) + 1 + 2 * reach
        if float(np.prod(dims.astype(np.float64))) > 2.0 ** 62:
            # kilometres of extent: close every gap wider than ``reach`` to reach + 1 (neighbourhoods unchanged)
            for a in range(3):
                u, inv = np.unique(shifted[a], return_inverse=True)
                shifted[a] = np.r_[0, np.cumsum(np.minimum(np.diff(u), reach + 1))][inv]
            dims = shifted.max(axis=1) + 1 + 2 * reach
        self.strides = np.array([dims[1] * dims[2], dims[2], 1], dtype=np.int64)
        # the margin of ``reach`` cells: neighbour keys never wrap
        key = (shifted[0] + reach) * self.strides[0] + (shifted[1] + reach) * self.strides[1] + shifted[2] + reach
        size = int(np.prod(dims))
        self.table: np.ndarray | None = None  # key -> cell, where the bounding box is small enough
        if size <= 8 * n + (1 << 16):
            occupied = np.bincount(key, minlength=size)
            self.keys = np.flatnonzero(occupied)
            self.counts = occupied[self.keys]
            self.table = np.full(size, -1, dtype=np.int64)
            self.table[self.keys] = np.arange(len(self.keys))
            self.cell = self.table[key]
        else:
            self.keys, self.cell, self.counts = np.unique(key, return_inverse=True, return_counts=True)
        member = np.empty(len(self.keys), dtype=np.int64)
        member[self.cell] = np.arange(n)  # any member: they share their coordinates
        self.ijk = ijk[:, member].T

    def neighbours(self, cells: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(i, neighbour) for every occupied cell at one of ``offsets`` from ``cells[i]``."""
        query = self.keys[cells][:, None] + (offsets @ self.strides)[None, :]
        if self.table is not None:
            found = self.table[query]
        else:
            pos = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
            found = np.where(self.keys[pos] == query, pos, -1)
        i, j = np.nonzero(found >= 0)
        return i, found[i, j]


class _Members:
    """The points ``idx`` grouped by their cell (``cell`` per point, ``ncells`` cells)."""

    def __init__(self, idx: np.ndarray, cell: np.ndarray, ncells: int) -> None:
        self.members = idx[np.argsort(cell[idx], kind="stable")]
        self.count = np.bincount(cell[idx], minlength=ncells)
        self.start = np.cumsum(self.count) - self.count

    def expand(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(i, member) for every member of ``cells[i]``."""
        n = self.count[cells]
        i = np.repeat(np.arange(len(cells)), n)
        pos = np.arange(len(i)) - np.repeat(np.cumsum(n) - n, n) + self.start[cells][i]
        return i, self.members[pos]


def _chunks(weights: np.ndarray, budget: int = _PAIR_CHUNK):
    """Consecutive slices of rows whose ``weights`` sum to at most ``budget`` (a heavier row alone)."""
    cum = np.cumsum(weights)
    lo = 0
    while lo < len(weights):
        base = cum[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(cum, base + budget, side="right")), lo + 1)
        yield slice(lo, hi)
        lo = hi


def _close(pts: np.ndarray, a: np.ndarray, b: np.ndarray, eps2: float) -> np.ndarray:
    """Bool per pair: point a[k] strictly within eps of point b[k] (squared distances, as Open3D's KD-tree)."""
    return ((pts[a] - pts[b]) ** 2).sum(axis=1) < eps2


def largest_cluster_grid(points: np.ndarray, eps: float, min_points: int) -> np.ndarray | None:
    """The largest DBSCAN cluster (bool per point; None without any cluster) with Open3D's DBSCAN semantics, on grids of cells instead of neighbour lists.

    Open3D: a point is core if at least ``min_points`` points (itself included) lie strictly within ``eps``;
    clusters are the connected sets of core points (pairs within eps), numbered in the order of their first
    core point; a non-core point within eps of a core point joins the lowest-numbered such cluster; the largest
    cluster wins, the lowest number on a tie. Computed here with exact float64 distances wherever the cells do
    not decide, so the result is the same except for pairs at eps to within rounding.
    """
    pts = np.asarray(points, dtype=np.float64)
    n = len(pts)
    eps2 = eps * eps
    h = eps / (2 * _SQRT3) * _GRID_SHRINK
    fine_ijk = np.floor(columns(pts) / h).astype(np.int64)
    fine = _Grid(fine_ijk, 4)
    coarse = _Grid(fine_ijk // 2, 2)

    # core points: enough points in the 27 fine cells around (all within eps) ...
    i, nb = fine.neighbours(np.arange(len(fine.keys)), _FINE_NEAR)
    core = np.bincount(i, weights=fine.counts[nb], minlength=len(fine.keys))[fine.cell] >= min_points
    und = np.flatnonzero(~core)
    if len(und):  # ... else fine cells wholly within eps of the point count, those partly within are checked
        i, nb = fine.neighbours(fine.cell[und], _FINE_REACH)
        p = pts[und[i]]
        box_lo = fine.ijk[nb] * h - 1e-6 * h  # the cells, slightly widened against rounding
        box_hi = (fine.ijk[nb] + 1) * h + 1e-6 * h
        d2_near = (np.maximum(np.maximum(box_lo - p, p - box_hi), 0) ** 2).sum(axis=1)
        d2_far = (np.maximum(p - box_lo, box_hi - p) ** 2).sum(axis=1)
        inside, partly = d2_far < eps2, (d2_far >= eps2) & (d2_near < eps2)
        count = np.bincount(i[inside], weights=fine.counts[nb[inside]], minlength=len(und)).astype(np.int64)
        upper = count + np.bincount(i[partly], weights=fine.counts[nb[partly]], minlength=len(und))
        todo = (count < min_points) & (upper >= min_points)
        sel = partly & todo[i]
        if sel.any():
            i, nb = i[sel], nb[sel]
            members = _Members(np.arange(n), fine.cell, len(fine.keys))
            for sl in _chunks(members.count[nb]):
                k, q = members.expand(nb[sl])
                owner = i[sl][k]
                count += np.bincount(owner[_close(pts, und[owner], q, eps2)], minlength=len(und))
        core[und[count >= min_points]] = True
    core_idx = np.flatnonzero(core)
    if len(core_idx) == 0:
        return None

    # clusters: fine cells holding a core point are the graph's nodes, 26-adjacent ones certainly linked ...
    node_cells = np.unique(fine.cell[core_idx])
    node_of_cell = np.full(len(fine.keys), -1, dtype=np.int64)
    node_of_cell[node_cells] = np.arange(len(node_cells))
    i, nb = fine.neighbours(node_cells, _half(_FINE_NEAR))
    linked = node_of_cell[nb] >= 0
    edges_a, edges_b = [i[linked]], [node_of_cell[nb[linked]]]

    def components() -> np.ndarray:
        a, b = np.concatenate(edges_a), np.concatenate(edges_b)
        graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(len(node_cells),) * 2)
        return connected_components(graph, directed=False)[1]

    comp = components()
    # ... and coarse cells (each within one component: its 8 fine cells are adjacent) up to 2 apart, in different
    # components, are linked if an exact test finds a core pair within eps; in rounds, dropping linked ones
    core_members = _Members(core_idx, coarse.cell, len(coarse.keys))
    node = np.full(len(coarse.keys), -1, dtype=np.int64)
    node[coarse.cell[core_idx]] = node_of_cell[fine.cell[core_idx]]
    held = np.flatnonzero(core_members.count)
    i, b = coarse.neighbours(held, _half(_COARSE_NEAR))
    a = held[i]
    keep = node[b] >= 0
    a, b = a[keep], b[keep]
    keep = comp[node[a]] != comp[node[b]]
    a, b = a[keep], b[keep]
    if len(a):  # bounding boxes of each cell's core points further than eps apart: no link
        sorted_pts = pts[core_members.members]
        lo = np.zeros((len(coarse.keys), 3))
        hi = np.zeros((len(coarse.keys), 3))
        lo[held] = np.minimum.reduceat(sorted_pts, core_members.start[held], axis=0)
        hi[held] = np.maximum.reduceat(sorted_pts, core_members.start[held], axis=0)
        gap = np.maximum(np.maximum(lo[a] - hi[b], lo[b] - hi[a]), 0)
        keep = (gap ** 2).sum(axis=1) < eps2
        a, b = a[keep], b[keep]
    while len(a):
        batch = next(_chunks(core_members.count[a] * core_members.count[b]))
        pair, p = core_members.expand(a[batch])  # every core point of cell a[pair] ...
        found = []
        for sl in _chunks(core_members.count[b[batch][pair]]):  # ... against every core point of cell b[pair]
            k, q = core_members.expand(b[batch][pair[sl]])
            found.append(pair[sl][k][_close(pts, p[sl][k], q, eps2)])
        found = np.unique(np.concatenate(found))
        edges_a.append(node[a[batch][found]])
        edges_b.append(node[b[batch][found]])
        comp = components()
        a, b = a[batch.stop:], b[batch.stop:]
        keep = comp[node[a]] != comp[node[b]]
        a, b = a[keep], b[keep]

    # numbered as Open3D does: in the order of each cluster's first core point
    comp_of_core = comp[node_of_cell[fine.cell[core_idx]]]
    first = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, comp_of_core, core_idx)
    number = np.empty_like(first)
    number[np.argsort(first)] = np.arange(len(first))
    labels = np.full(n, -1, dtype=np.int64)
    labels[core_idx] = number[comp_of_core]

    # border points: the lowest-numbered cluster with a core point within eps
    border = np.flatnonzero(~core)
    if len(border):
        i, nb = coarse.neighbours(coarse.cell[border], _COARSE_NEAR)
        keep = core_members.count[nb] > 0
        i, nb = i[keep], nb[keep]
        best = np.full(len(border), n, dtype=np.int64)
        for sl in _chunks(core_members.count[nb]):
            k, q = core_members.expand(nb[sl])
            owner = i[sl][k]
            hit = _close(pts, border[owner], q, eps2)
            np.minimum.at(best, owner[hit], labels[q[hit]])
        joined = best < n
        labels[border[joined]] = best[joined]
    sizes = np.bincount(labels[labels >= 0])
    return labels == int(np.argmax(sizes))
