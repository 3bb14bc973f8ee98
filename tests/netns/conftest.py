"""Fixtures of the netns tier: the seed topology with etcd and room for agents."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from etcdha.lab.directors import DirectorLab


@pytest.fixture
def lab() -> Iterator[DirectorLab]:
    """Two directors, one etcd member on the control link."""
    with DirectorLab(nodes=2) as lab:
        yield lab


@pytest.fixture
def lab3() -> Iterator[DirectorLab]:
    """Two directors, a three-member etcd cluster."""
    with DirectorLab(nodes=2, etcd_members=3) as lab:
        yield lab
