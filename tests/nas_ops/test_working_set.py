"""space_working_set_bytes: the typical network's working set of a space, deterministic and inside the space's
range of network working sets."""

from __future__ import annotations

import random

import pytest

from nas_ops.counting import network_memory_bytes, space_working_set_bytes
from nas_ops.space import load_space


@pytest.mark.parametrize("name", ["micro-16", "tiny-32", "proxyless-mobile"])
def test_the_typical_working_set_is_one_of_the_spaces_networks(name: str) -> None:
    space = load_space(name)
    typical = space_working_set_bytes(space)
    assert typical == space_working_set_bytes(load_space(name))  # seeded: the same space, the same number
    rng = random.Random(5)
    sizes = [network_memory_bytes(space.architecture(space.random_choices(rng)), 1, "float32") for _ in range(200)]
    assert min(sizes) <= typical <= max(sizes)


def test_it_scales_with_the_batch_and_the_dtype() -> None:
    space = load_space("tiny-32")
    single = space_working_set_bytes(space)
    assert space_working_set_bytes(space, 8) > single > space_working_set_bytes(space, 1, "float16")
    with pytest.raises(ValueError, match="dtype"):
        space_working_set_bytes(space, 1, "int8")
