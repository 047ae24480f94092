"""The backfill's batches land where the live export's `producer.send` puts the same key:
`default_partition` is aiokafka's default partitioner, value for value."""

from __future__ import annotations

import random
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2

from services.export.adapters import export_topic

RANDOM = random.Random(20261126)
KEYS = [
    *(str(uuid.UUID(int=RANDOM.getrandbits(128))).encode() for _ in range(2000)),
    *(RANDOM.randbytes(RANDOM.randrange(0, 70)) for _ in range(2000)),  # every tail length
    "vaccination-åäö".encode(),
    b"",
]


def test_murmur2_is_kafkas() -> None:
    assert [export_topic.murmur2(k) for k in KEYS] == [murmur2(k) for k in KEYS]


@pytest.mark.parametrize("partitions", [[0], [0, 1, 2], list(range(6)), list(range(50))])
def test_default_partition_is_the_producers(partitions: list[int]) -> None:
    partitioner = DefaultPartitioner()
    assert [export_topic.default_partition(k, partitions) for k in KEYS] == [
        partitioner(k, partitions, partitions) for k in KEYS
    ]
