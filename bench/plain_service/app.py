"""The plain service: a FastStream Kafka app with two handlers, as the documentation
writes one (broker and app at module level, topics from the settings, the answer
returned to the `@broker.publisher` and published by FastStream once the handler ends).

Per message: validate it (pydantic, by FastStream), open an `AsyncSession` and a
transaction, read or write, commit, return the event. No inbox, no outbox, no batching:
what the comparison in BENCHMARKS.md sets the groups service against.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

from faststream import Depends
from faststream.asgi import AsgiFastStream, make_ping_asgi
from faststream.kafka import KafkaBroker, KafkaResponse
from pydantic_settings import BaseSettings
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from bench.plain_service.messages import (
    Add,
    AddedData,
    AddedEvent,
    Catalog,
    PromptEvent,
    Started,
    membership_view,
    prompt_data,
)
from bench.plain_service.tables import Base, Customer, Membership

# The clinics' calendar decides what is selectable today.
ZONE = ZoneInfo("Europe/Stockholm")
CLOUDEVENT_HEADERS = {"content-type": "application/cloudevents+json; charset=UTF-8"}


class Settings(BaseSettings):
    """From the environment; the names the groups service reads, where it has one."""

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql+asyncpg://localhost/plain_groups"
    topic_started: str = "vaccination.started.v1"
    topic_commands: str = "customer-groups.commands.v1"
    topic_prompts: str = "customer-groups.prompts.v1"
    topic_events: str = "customer-groups.events.v1"
    plain_consumer_group: str = "plain-groups"
    plain_http_port: int = 8090
    plain_catalog_file: Path = (
        Path(__file__).resolve().parents[2] / "services" / "groups" / "catalog" / "catalog.json"
    )
    log_level: str = "INFO"


settings = Settings()
logging.basicConfig(level=settings.log_level)
logger = logging.getLogger("plain_service")
logger.setLevel(settings.log_level)

catalog = Catalog.load(settings.plain_catalog_file)
engine = create_async_engine(settings.database_url)
session_maker = async_sessionmaker(engine, expire_on_commit=False)

broker = KafkaBroker(settings.kafka_bootstrap_servers, logger=logger)
app = AsgiFastStream(broker, asgi_routes=[("/readyz", make_ping_asgi(broker, timeout=5.0))])


async def get_session() -> AsyncIterator[AsyncSession]:
    async with session_maker() as session:
        yield session


Session = Annotated[AsyncSession, Depends(get_session)]


@app.on_startup
async def create_tables() -> None:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)


@app.after_shutdown
async def close_database() -> None:
    await engine.dispose()


@broker.subscriber(
    settings.topic_started, group_id=settings.plain_consumer_group, auto_offset_reset="earliest"
)
@broker.publisher(settings.topic_prompts)
async def on_vaccination_started(event: Started, session: Session) -> KafkaResponse:
    """vaccination.started -> the customer's memberships -> customer_group.prompt."""
    start = event.data
    async with session.begin():
        rows = await session.scalars(
            select(Membership).where(
                Membership.personnummer == start.personnummer,
                Membership.status.in_(("active", "historical")),
            )
        )
        memberships = rows.all()
    prompt = PromptEvent(data=prompt_data(start, memberships, catalog, datetime.now(ZONE).date()))
    return KafkaResponse(prompt, key=start.personnummer.encode(), headers=CLOUDEVENT_HEADERS)


@broker.subscriber(
    settings.topic_commands, group_id=settings.plain_consumer_group, auto_offset_reset="earliest"
)
@broker.publisher(settings.topic_events)
async def on_add(command: Add, session: Session) -> KafkaResponse:
    """customer_group.add -> a new active membership -> customer_group.added. Any other
    command fails validation (this service handles adds only)."""
    add = command.data
    today = datetime.now(ZONE).date()
    catalog.check(add.group_code, add.subgroup_code, today)
    now = datetime.now(UTC)
    async with session.begin():
        if await session.get(Customer, add.personnummer) is None:
            raise ValueError("unknown customer")
        membership = Membership(
            membership_id=str(uuid.uuid4()),
            personnummer=add.personnummer,
            group_code=add.group_code,
            subgroup_code=add.subgroup_code,
            reference_code=add.reference_code,
            valid_from=add.valid_from or today,
            valid_to=None,
            version=1,
            status="active",
            created_at=now,
            updated_at=now,
            created_by_user=add.actor.user_id,
            created_by_unit=add.actor.unit_id,
        )
        session.add(membership)
    added = AddedEvent(
        time=now,
        data=AddedData(
            command_id=command.id,
            personnummer=add.personnummer,
            actor=add.actor,
            membership=membership_view(membership, catalog),
        ),
    )
    return KafkaResponse(added, key=add.personnummer.encode(), headers=CLOUDEVENT_HEADERS)
