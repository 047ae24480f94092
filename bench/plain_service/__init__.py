"""The baseline: the customer-groups start -> prompt and add -> added work as a plain
FastStream service, written the way FastStream's documentation shows a Kafka service.

One message per handler call (`@broker.subscriber` stacked with `@broker.publisher`, the
answer returned), an SQLAlchemy `AsyncSession` per message with its own transaction, and
FastStream's defaults otherwise, among them its acknowledgement policy (`ACK_FIRST`: the
consumer's offsets are auto-committed in the background, whatever the handler did). It is
the design a team would write first; BENCHMARKS.md says which guarantees it lacks. The
benchmark runs it beside the groups service (`python -m bench --only versus`); it imports
nothing from `services/`.

    python -m bench.plain_service   # settings from the environment, see `app.Settings`
"""
