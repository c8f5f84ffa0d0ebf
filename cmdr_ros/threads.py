"""The thread pools of a cmdr process (the node, every CLI verb): NumPy/SciPy's OpenBLAS runs on one thread.

On a 2-core cell PC torch's OpenMP pool already uses every core; OpenBLAS threads started by a small NumPy call
(the plane fit of background removal, a 3x3 SVD) keep spinning for a while after it and take the cores from the
torch stages that follow. Measured with ``cmdr bench`` (lite 3d, 400x400, 2 cores): end to end 200 -> 155 ms, the
heads 9.4 -> 5.9 ms, with OpenBLAS on one thread. threadpoolctl (scikit-learn's) sets it at run time, whatever was
imported first; torch's own pool is left alone.
"""
from __future__ import annotations


def single_threaded_blas() -> None:
    """Limit every loaded OpenBLAS (NumPy's, SciPy's) to one thread for the rest of the process."""
    import numpy  # noqa: F401 - loads NumPy's OpenBLAS, so that the limit reaches it
    import scipy.linalg  # noqa: F401 - and SciPy's
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # torch's own BLAS is inside its library: only OpenMP shows
