import random

import pytest
from aiokafka.partitioner import DefaultPartitioner

from libs.kafka.producer import partition_of


def test_keys_land_on_the_partitions_kafkas_default_partitioner_gives() -> None:
    """Ordering per study depends on every producer mapping a key the same way, including
    producers from before the hash was remembered and other Kafka clients."""
    rng = random.Random(7)
    default = DefaultPartitioner()
    for n in range(2000):
        key = f"1.2.826.0.1.3680043.8.498.{rng.getrandbits(64)}.{n}".encode()[: 1 + n % 64]
        partitions = list(range(1 + n % 12))
        assert partition_of(key, partitions, partitions) == default(key, partitions, partitions)
        assert partition_of(key, partitions, partitions) == default(key, partitions, partitions)


@pytest.mark.parametrize(
    ("key", "partition"),
    [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)],
)
def test_keys_map_as_the_java_client_maps_them(key: bytes, partition: int) -> None:
    # Partitions of 1,000 given by Kafka's Java producer (the vectors kafka-python tests with).
    assert partition_of(key, list(range(1000)), []) == partition


def test_events_without_a_key_go_to_an_available_partition() -> None:
    assert partition_of(None, [0, 1, 2], [2]) == 2
