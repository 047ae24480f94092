"""Past two cores, on paper: the measurements for a scale-out model (issue 17).

`python -m bench.scaleout` starts its own Apache Kafka broker and embedded PostgreSQL (as
`python -m bench` does), then measures:

1. CPU per record of each part while one groups service process runs the standard mix
   flat out (`bench.scaleout.service`): the service process, PostgreSQL (the postmaster
   and every backend and worker), the broker and the benchmark client; PostgreSQL's WAL
   bytes per record; the relay's rows per round.
2. The single outbox relay leader on its own (`bench.scaleout.relay`): an outbox filled
   with the service's own output rows, drained by one relay in a process of its own;
   rows/s and the CPU per row of the relay, PostgreSQL and the broker, per round size.
3. From those, the apply cost per record and the partition limit, and a projection to
   4, 8 and 16 cores (`bench.scaleout.model`).

About 30-40 s on a 2-core machine.

It prints a table and writes `.run/bench/scaleout.json`. BENCHMARKS.md has the figures.
"""
