"""Part 3: the scale-out model, from the measured costs (a projection, not a measurement).

Per inbound record, in CPU-us (= CPU-ms per 1,000 records):

- `service`: the groups service process in part 1; it applies the record and, in the
  one process that leads, relays its outputs.
- `relay`: the relay's share, `outputs_per_record` x the relay process's CPU per row in
  part 2. `apply = service - relay`. The drained outbox of part 2 gives full rounds,
  which cost less per row than the smaller rounds of a relay that keeps up, so `relay`
  is a lower bound and `apply` an upper bound.
- `postgresql`, `kafka`: the servers' CPU in part 1 (the relay's part included).

For `cores` cores holding everything (service processes, PostgreSQL, the broker; the
load's producers and the outputs' readers elsewhere), `processes` service processes and
`partitions` partitions per inbound topic, the throughput is the least of:

- machine: cores / (service + postgresql + kafka);
- busiest process: one event loop is at most one core; the range assignor gives the
  busiest process ceil(partitions / processes) of the partitions, and it may be the
  relay's leader: 1 / (apply x its share + relay / shards);
- relay rounds: one leader publishes at most the rate measured in part 2 (rows/s, its
  rounds one after another), i.e. that / outputs_per_record inbound records/s, per shard;
- processes <= partitions: a process beyond that has no partition.

`shards` > 1 is a design not built (a relay per range of partitions, each with its own
lease and transactional id); shards = 1 is the service as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

CORES = (4, 8, 16)


@dataclass(frozen=True)
class Costs:
    service: float  # CPU-us per inbound record
    postgresql: float
    kafka: float
    outputs_per_record: float
    relay_per_row: float  # CPU-us of the relay process per outbox row
    relay_rows_per_s: float  # one leader alone

    @property
    def relay(self) -> float:
        return self.relay_per_row * self.outputs_per_record

    @property
    def apply(self) -> float:
        return self.service - self.relay

    @property
    def per_record(self) -> float:
        return self.service + self.postgresql + self.kafka

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "relay": round(self.relay, 1),
            "apply": round(self.apply, 1),
            "per_record": round(self.per_record, 1),
        }


@dataclass(frozen=True)
class Projection:
    cores: int
    partitions: int
    shards: int
    processes: int
    rate: float  # inbound records/s
    limit: str  # what binds
    ceilings: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def ceilings(
    costs: Costs, *, cores: int, processes: int, partitions: int, shards: int = 1
) -> dict[str, float]:
    share = math.ceil(partitions / processes) / partitions
    return {
        "machine": cores * 1e6 / costs.per_record,
        "busiest process": 1e6 / (costs.apply * share + costs.relay / shards),
        "relay rounds": shards * costs.relay_rows_per_s / costs.outputs_per_record,
    }


def project(costs: Costs, *, cores: int, partitions: int, shards: int = 1) -> Projection:
    """The best number of processes (at most one per partition, and per core) and what
    limits it."""
    best: tuple[float, Projection] | None = None
    for processes in range(1, min(partitions, cores) + 1):
        found = ceilings(
            costs, cores=cores, processes=processes, partitions=partitions, shards=shards
        )
        limit = min(found, key=lambda name: found[name])
        rate = found[limit]
        if best is None or rate > best[0]:  # the fewest processes that reach the best rate
            if processes == partitions and limit == "busiest process":
                limit = f"busiest process (partitions: {partitions})"
            rounded = {k: float(round(v)) for k, v in found.items()}
            best = (
                rate,
                Projection(cores, partitions, shards, processes, round(rate), limit, rounded),
            )
    assert best is not None
    return best[1]


def projections(costs: Costs, partitions: int) -> list[Projection]:
    """The service as it is, with more partitions, and with a sharded relay too."""
    more = max(24, partitions)
    found = []
    for cores in CORES:
        found.append(project(costs, cores=cores, partitions=partitions))
        found.append(project(costs, cores=cores, partitions=more))
        found.append(project(costs, cores=cores, partitions=more, shards=4))
    return found
