"""The numpy fallback returns exactly what faiss returns."""

import numpy as np

from eft.vector_index import NumpyFlatIP


def test_numpy_fallback_matches_faiss():
    import faiss

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    q = rng.normal(size=(37, 16)).astype(np.float32)
    ref = faiss.IndexFlatIP(16)
    ref.add(x)
    ours = NumpyFlatIP(16)
    ours.add(x[:200])
    ours.add(x[200:])
    assert ours.ntotal == 500
    rs, ri = ref.search(q, 10)
    os_, oi = ours.search(q, 10, block=8)
    np.testing.assert_array_equal(ri, oi)
    np.testing.assert_allclose(rs, os_, rtol=1e-5, atol=1e-5)


def test_numpy_fallback_pads_past_the_corpus():
    idx = NumpyFlatIP(2)
    idx.add(np.eye(2, dtype=np.float32))
    s, i = idx.search(np.array([[1.0, 0.0]], dtype=np.float32), 4)
    assert i.tolist() == [[0, 1, -1, -1]] and s[0, 0] == 1.0
    empty = NumpyFlatIP(2)
    s, i = empty.search(np.ones((1, 2), dtype=np.float32), 3)
    assert i.tolist() == [[-1, -1, -1]]
