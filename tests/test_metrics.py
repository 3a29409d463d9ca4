import numpy as np
import pytest

from hpcem.metrics import adjusted_rand_index, purity


def test_ari_reference():
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    rng = np.random.default_rng(0)
    assert abs(adjusted_rand_index(rng.integers(0, 5, 5000), rng.integers(0, 5, 5000))) < 0.01


def test_purity_reference():
    assert purity([1, 1, 2, 2], [0, 0, 1, 1]) == 1.0
    assert purity([1, 1, 1, 1], [0, 0, 1, 2]) == 0.5
    assert purity([1, 1, 2, 2, 2], [0, 1, 2, 2, 0]) == pytest.approx((0.5 + 2 / 3) / 2)
