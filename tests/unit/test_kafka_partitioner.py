"""Our partitioner is aiokafka's default one, value for value: the export backfill's
batches land where the live export's `producer.send` puts the same key, and the
producers keep placing keys where they always did."""

from __future__ import annotations

import random
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2

from services.common import kafka

RANDOM = random.Random(20261126)
KEYS = [
    *(str(uuid.UUID(int=RANDOM.getrandbits(128))).encode() for _ in range(2000)),
    *(RANDOM.randbytes(RANDOM.randrange(0, 70)) for _ in range(2000)),  # every tail length
    "vaccination-åäö".encode(),
    b"",
]


def test_murmur2_is_kafkas() -> None:
    assert [kafka.murmur2(k) for k in KEYS] == [murmur2(k) for k in KEYS]


@pytest.mark.parametrize("partitions", [[0], [0, 1, 2], list(range(6)), list(range(50))])
def test_default_partition_is_the_producers(partitions: list[int]) -> None:
    partitioner = DefaultPartitioner()
    assert [kafka.default_partition(k, partitions) for k in KEYS] == [
        partitioner(k, partitions, partitions) for k in KEYS
    ]


def test_the_producers_partitioner_is_aiokafkas() -> None:
    ours, theirs = kafka.FastDefaultPartitioner(), DefaultPartitioner()
    partitions = list(range(6))
    assert [ours(k, partitions, partitions[:2]) for k in KEYS] == [
        theirs(k, partitions, partitions[:2]) for k in KEYS
    ]
    assert {ours(None, partitions, [4]) for _ in range(20)} == {4}, "unkeyed: an available one"
