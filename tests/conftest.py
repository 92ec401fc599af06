"""Shared fixtures: the tiny built-in world, built once per test session (about a second)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    import world
    out = str(tmp_path_factory.mktemp("world") / "tiny")
    world.synth(out, seed=0, size="tiny")
    return out
