"""Block planning: divisor alignment, store chunks, full Z, halos, and the block-shape search."""

from __future__ import annotations

import numpy as np
import pytest

from zarrstain.engine.planner import auto_halo, plan_tiles
from zarrstain.errors import ShapeMismatchError
from zarrstain.testing import random_model


@pytest.fixture(scope="module")
def model3d():
    # depth 2: divisor 4, receptive radius 24, exact halo 24
    return random_model(ndim=3, depth=2, mult_chan=4, seed=3)


@pytest.mark.parametrize("budget", ["256MiB", "384MiB", "512MiB", "1GiB"])
def test_plan_blocks_are_divisor_aligned_and_prefer_store_chunks(model3d, budget):
    plan = plan_tiles(
        (3, 37, 301, 260), model3d, halo="exact", align={"y": 64, "x": 64}, block_memory=budget
    )
    assert plan.padded == (40, 304, 260)
    for cores in plan.chunks[1:]:
        offsets = np.cumsum((0, *cores[:-1]))
        assert all(o % model3d.divisor == 0 for o in offsets)
        assert all(c % model3d.divisor == 0 for c in cores)
    # whole store chunks unless they would cost more than 10% more compute
    free = plan_tiles((3, 37, 301, 260), model3d, halo="exact", block_memory=budget)
    assert plan.compute_ratio <= 1.1 * free.compute_ratio
    if budget == "384MiB":
        assert plan.chunks[2] == (192, 112)  # 3×64, then the rest
    if budget == "1GiB":  # the whole volume fits one block: no halo at all
        assert plan.chunks[1:] == ((40,), (304,), (260,)) and plan.compute_ratio == 1


def test_full_z_when_it_fits(model3d):
    plan = plan_tiles((1, 60, 512, 512), model3d, halo="exact", block_memory="512MiB")
    assert plan.chunks[1] == (60,) and plan.halo[0] == 0
    assert len(plan.chunks[2]) > 1


def test_auto_halo_is_smaller_than_exact():
    model = random_model(ndim=3, depth=4, mult_chan=2)
    assert auto_halo(model) == (80, 80, 80)  # exact: 112
    assert plan_tiles((1, 32, 1024, 1024), model, halo="exact").halo_mode == "exact"


def test_z_too_small_for_3d_model(model3d):
    with pytest.raises(ShapeMismatchError, match=r"z=2 is too small .* use a 2D model"):
        plan_tiles((1, 2, 64, 64), model3d)


def test_chunks_must_be_multiples_of_divisor(model3d):
    with pytest.raises(ShapeMismatchError, match=r"chunks\['y'\]=30 .* use 32"):
        plan_tiles((1, 8, 64, 64), model3d, chunks={"y": 30})


def test_bad_halo(model3d):
    with pytest.raises(ValueError, match="halo must be"):
        plan_tiles((1, 8, 64, 64), model3d, halo="big")


def test_the_planner_trades_halo_overhead_against_block_size():
    """pytorch_fnet's default net on 16×1024×1024 in 6 GB: two full-height strips, not squares."""
    model = random_model(ndim=3, depth=4, mult_chan=32)
    plan = plan_tiles((1, 16, 1024, 1024), model, halo="exact", block_memory=6 * 10**9)
    assert plan.chunks[1:] == ((16,), (1024,), (512, 512))
    assert plan.compute_ratio == pytest.approx((1024 + 224) / 1024)
    squares = plan_tiles((1, 16, 1024, 1024), model, halo="exact", chunks={"y": 512, "x": 512})
    assert plan.compute_ratio < squares.compute_ratio
    # edge blocks overlap on one side only: the estimate counts 512 + 112, not 512 + 224
    assert plan.extended_shape == (1, 16, 1024, 624)
    assert plan.memory_per_block <= 6 * 10**9


def test_the_block_search_plans_whole_slides_within_budget(model3d):
    plan = plan_tiles((1, 4, 40000, 60000), model3d, block_memory="2GiB")
    assert plan.memory_per_block <= 2 * 2**30 and plan.n_blocks > 1
