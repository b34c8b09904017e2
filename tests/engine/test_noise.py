"""Counter-based random numbers (zarrstain.noise): a function of position, never of chunking."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from zarrstain import noise


@pytest.mark.parametrize(
    "chunks", [(2, 1, 7, 9), (1, 3, 16, 5), (3, 3, 33, 40), ((1, 2), (2, 1), (10, 23), (17, 23))]
)
def test_any_chunking_draws_the_whole_fields_numbers_bitwise(chunks):
    shape = (3, 3, 33, 40)
    stream = noise.key(7, 0, 12, 1)
    whole = noise.normal(stream, (0, 0, 0, 0), shape, shape)
    tiled = noise.normal_array(stream, shape, chunks).compute()
    np.testing.assert_array_equal(tiled, whole)
    # and a region drawn on its own, by its global origin
    region = noise.normal(stream, (1, 2, 10, 17), (2, 1, 20, 23), shape)
    np.testing.assert_array_equal(region, whole[1:3, 2:3, 10:30, 17:40])


def test_the_numbers_are_standard_normal_and_streams_independent():
    shape = (4, 1, 128, 128)
    a = noise.normal(noise.key(0, 0, 0, 0), (0,) * 4, shape, shape).ravel()
    assert abs(a.mean()) < 0.01 and abs(a.std() - 1) < 0.01
    assert stats.kstest(a, "norm").pvalue > 0.01
    for other in [(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]:  # seed, sample, step, c
        b = noise.normal(noise.key(*other), (0,) * 4, shape, shape).ravel()
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
    # neighbours are uncorrelated too (no structure along the index)
    field = a.reshape(shape)
    assert abs(np.corrcoef(field[..., 1:].ravel(), field[..., :-1].ravel())[0, 1]) < 0.01


def test_uniforms_are_in_the_unit_interval_and_keys_differ():
    u = noise.uniform(noise.key(3), (0, 0), (256, 256), (256, 256))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    assert len({noise.key(1, 2), noise.key(2, 1), noise.key(1, 2, 0), noise.key(1)}) == 4
