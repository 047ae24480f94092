"""The Python client package (`clients/python`, installed by `make install`) against the
real groups service (its own process, HTTP included) over the real broker: the user
guide's two flows, retries across an outage, and SASL with only a client's ACLs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiokafka.errors import KafkaConnectionError

from customer_groups_client import (
    Actor,
    CustomerGroupsClient,
    HttpError,
    KafkaConfig,
    OutcomeTimeout,
    RequestedGroup,
    Topics,
    Vaccine,
    fetch_catalog,
    fetch_prompt,
)
from devinfra.provider import Infrastructure
from devinfra.services import ServiceProcess, free_port, http_json
from devinfra.tokens import TokenIssuer, bearer
from services.common.settings import AppSettings, DatabaseSettings, GroupsSettings
from services.groups.bootstrap import GroupsSettingsBundle
from tests.acl_broker import PRINCIPALS, AclBroker
from tests.e2e.conftest import stack_env
from tests.integration.conftest import running_groups_service
from tests.kafka_tools import KafkaTestClient

pytestmark = pytest.mark.integration

PNR = "191212121212"
NURSE = Actor("SE-HSA-nurse-1", "unit-1")
INFLUVAC = Vaccine("J07BB02", "Influvac Tetra", dose=1)
COMIRNATY = Vaccine("J07BN01", "Comirnaty", dose=1)
STOCKHOLM = ZoneInfo("Europe/Stockholm")  # the service's "today"
WAIT = 60.0  # generous: the machine is shared


@dataclass
class Groups:
    process: ServiceProcess
    kafka: KafkaConfig
    topics: Topics
    issuer: TokenIssuer

    def token(self, actor: Actor) -> str:
        return self.issuer.token(actor.user_id, actor.unit_id)

    def client(self, **options: Any) -> CustomerGroupsClient:
        return CustomerGroupsClient(
            self.kafka, topics=self.topics, **{"source": "/vaccination/test-client", **options}
        )

    async def wait_until_booked(self, booking_id: str) -> None:
        """Topics are not ordered with each other: the guide's flow has the booking long
        before the start, so the test waits until it is stored."""
        headers = bearer(self.token(NURSE))
        url = f"{self.process.url}/booking?booking_id={booking_id}"
        for _ in range(600):
            status, _ = await asyncio.to_thread(http_json, url, headers=headers)
            if status == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"booking {booking_id} was not stored")


@pytest.fixture
def groups(infra: Infrastructure, database_url: str, tmp_path: Path) -> Iterator[Groups]:
    """`python -m services.groups` on its own topics and database, trusting `issuer`."""
    env = stack_env(infra, database_url, suffix=os.urandom(4).hex())
    issuer = TokenIssuer()
    port = free_port()
    process = ServiceProcess(
        "services.groups",
        {
            **env,
            **issuer.env(issuer.write_jwks(tmp_path / "jwks.json")),
            "GROUPS_ALLOWED_UNITS": "unit-1,unit-3",
            "GROUPS_HTTP_PORT": str(port),
        },
        port=port,
        log_path=tmp_path / "groups.log",
    )
    process.start(wait=180)
    try:
        topics = Topics(
            **{name: env[f"TOPIC_{name.upper()}"] for name in Topics.__dataclass_fields__}
        )
        yield Groups(process, KafkaConfig(infra.kafka_bootstrap), topics, issuer)
    finally:
        process.stop()


async def test_the_guides_flow_with_the_popup(groups: Groups) -> None:
    """Book online -> "Starta vaccination" -> popup -> "Lägg till" -> close -> dose signed."""
    async with (
        groups.client() as client,
        groups.client(listen=False, source="/booking/system-a") as booking_system,
    ):
        followed = client.prompts(NURSE.unit_id)
        await booking_system.publish_booking(
            "b-1",
            unit_id=NURSE.unit_id,
            start_time=datetime(2026, 11, 26, 14, 20, tzinfo=UTC),
            personnummer=PNR,
            first_name="Test",
            last_name="Testsson",
            vaccine=INFLUVAC,
            requested_group=RequestedGroup("INFLUENSA", "ALDER_65_PLUS"),
        )
        await groups.wait_until_booked("b-1")

        prompt = await client.start_vaccination(
            "v-popup",
            actor=NURSE,
            personnummer=PNR,
            booking_id="b-1",
            vaccine=INFLUVAC,
            timeout=WAIT,
        )
        assert (prompt.vaccination_id, prompt.unit_id, prompt.required) == (
            "v-popup",
            "unit-1",
            True,
        )
        assert [(s.group_code, s.subgroup_code, s.reason) for s in prompt.suggestions] == [
            ("INFLUENSA", "ALDER_65_PLUS", "REQUESTED_AT_BOOKING")
        ]
        assert "COVID_19" in {g.group_code for g in prompt.catalog}
        # Another unit's vaccination is not among this unit's prompts.
        other = await client.start_vaccination(
            "v-other-unit",
            actor=Actor("SE-HSA-nurse-3", "unit-3"),
            personnummer="200001012384",
            timeout=WAIT,
        )
        assert other.unit_id == "unit-3"
        async with asyncio.timeout(WAIT):
            assert (await anext(followed)).prompt_id == prompt.prompt_id
        second = asyncio.ensure_future(anext(followed))
        await asyncio.sleep(1.0)
        assert not second.done()
        second.cancel()

        # The popup's "Lägg till" with the suggestion, then the same group again.
        added = await client.add(
            PNR,
            actor=NURSE,
            group_code="INFLUENSA",
            subgroup_code="ALDER_65_PLUS",
            prompt_id=prompt.prompt_id,
            timeout=WAIT,
        )
        assert added.accepted and added.type == "customer_group.added"
        assert added.membership is not None
        assert (added.membership.group_name, added.membership.status) == ("Influensa", "active")
        assert added.membership.created_by == NURSE
        again = await client.add(
            PNR, actor=NURSE, group_code="INFLUENSA", prompt_id=prompt.prompt_id, timeout=WAIT
        )
        assert again.rejection is not None and again.rejection.reason_code == "ALREADY_ACTIVE"

        # The cross: the groups recorded for this vaccination.
        closed = await client.close_prompt(
            PNR,
            actor=NURSE,
            prompt_id=prompt.prompt_id,
            vaccination_id="v-popup",
            timeout=WAIT,
        )
        assert closed.confirmation is not None
        assert (closed.confirmation.basis, closed.confirmation.prompt_id) == (
            "popup",
            prompt.prompt_id,
        )
        assert [m.membership_id for m in closed.confirmation.memberships] == [
            added.membership.membership_id
        ]
        # The dose signed in the record decides from now on.
        registered = await client.register_vaccination(
            "v-popup",
            actor=NURSE,
            personnummer=PNR,
            administered_at=datetime.now(UTC),
            vaccine=INFLUVAC,
            booking_id="b-1",
            timeout=WAIT,
        )
        assert registered.confirmation is not None
        assert (registered.confirmation.basis, registered.confirmation.version) == (
            "registration",
            2,
        )
        assert registered.confirmation.vaccine == {
            "code": "J07BB02",
            "name": "Influvac Tetra",
            "dose_number": 1,
        }
        assert not registered.confirmation.missing_group

        # A client that missed the prompt fetches the very same event over HTTP.
        fetched = await fetch_prompt(
            groups.process.url, "v-popup", token=groups.token(Actor("SE-HSA-nurse-2", "unit-1"))
        )
        assert fetched is not None
        assert (fetched.event.id, fetched.event.data) == (prompt.event.id, prompt.event.data)
        elsewhere = Actor("SE-HSA-nurse-3", "unit-3")
        assert (
            await fetch_prompt(groups.process.url, "v-popup", token=groups.token(elsewhere)) is None
        )
        with pytest.raises(HttpError) as refused:
            await fetch_prompt(
                groups.process.url, "v-popup", token=groups.token(Actor("n", "unit-9"))
            )
        assert refused.value.status == 403
        await followed.aclose()


async def test_the_guides_flow_without_the_popup(groups: Groups) -> None:
    """Efterregistrering: "Kundgrupper" -> "Spara" a back-dated group, the pencil, the
    red ball, and the dose registered afterwards with its real time."""
    three_weeks_back = datetime.now(UTC) - timedelta(days=21)
    async with groups.client(timeout=WAIT) as client:
        catalog = await fetch_catalog(groups.process.url)
        covid = catalog.group("COVID_19")
        assert covid is not None and "REKOMMENDERAD" in {s.subgroup_code for s in covid.subgroups}

        saved = await client.add(
            PNR,
            actor=NURSE,
            group_code="COVID_19",
            subgroup_code="REKOMMENDERAD",
            valid_from=three_weeks_back.date(),
        )
        membership = saved.raise_for_rejection().membership
        assert membership is not None and membership.valid_from == three_weeks_back.date()
        # The pencil: a reference code added, nothing else changed.
        corrected = await client.update(
            PNR, actor=NURSE, membership_id=membership.membership_id, reference_code="R-17"
        )
        assert corrected.membership is not None and corrected.previous is not None
        assert (corrected.previous.reference_code, corrected.membership.reference_code) == (
            None,
            "R-17",
        )
        assert corrected.membership.subgroup_code == "REKOMMENDERAD"  # UNCHANGED stays

        # A group saved by mistake, and the red ball: it never applied.
        mistake = await client.add(PNR, actor=NURSE, group_code="PNEUMOKOCK")
        assert mistake.membership is not None
        voided = await client.remove(
            PNR,
            actor=NURSE,
            membership_id=mistake.membership.membership_id,
            entered_in_error=True,
        )
        assert voided.membership is not None and voided.membership.status == "entered_in_error"

        # The dose given three weeks ago, registered now: the groups of its day.
        late = await client.register_vaccination(
            "v-late",
            actor=NURSE,
            personnummer=PNR,
            administered_at=three_weeks_back,
            vaccine=COMIRNATY,
        )
        assert late.confirmation is not None
        assert (late.confirmation.basis, late.confirmation.prompt_id) == ("registration", None)
        assert [(m.group_code, m.reference_code) for m in late.confirmation.memberships] == [
            ("COVID_19", "R-17")
        ]
        # Ended: historical with its period (guide step 5).
        ended = await client.remove(PNR, actor=NURSE, membership_id=membership.membership_id)
        assert ended.membership is not None
        assert (ended.membership.status, ended.membership.valid_to) == (
            "historical",
            datetime.now(STOCKHOLM).date(),
        )
        unknown = await client.remove(PNR, actor=NURSE, membership_id=membership.membership_id)
        assert unknown.rejection is not None
        assert unknown.rejection.reason_code == "ALREADY_HISTORICAL"


async def test_retries_keep_the_command_id_and_outlive_an_outage(
    groups: Groups, kafka: KafkaTestClient
) -> None:
    """The service away: the start and the command wait on the topic, the client retries
    with the same ids, and each gets exactly one answer once the service is back; a
    client restarted meanwhile reads the outcomes from `since`."""
    before = datetime.now(UTC)
    async with groups.client() as client:
        groups.process.stop()
        with pytest.raises(OutcomeTimeout):
            await client.start_vaccination(
                "v-outage", actor=NURSE, personnummer=PNR, timeout=2, event_id="start-1"
            )
        # GET /prompt is away too: try again later.
        with pytest.raises(HttpError) as away:
            await fetch_prompt(groups.process.url, "v-outage", token=groups.token(NURSE))
        assert away.value.status == 0
        with pytest.raises(OutcomeTimeout):
            await client.add(PNR, actor=NURSE, group_code="COVID_19", command_id="add-1", timeout=2)
        # The retry: same id (a new id would add a second membership).
        await client.send_command(
            "add",
            personnummer=PNR,
            actor=NURSE,
            fields={"group_code": "COVID_19"},
            command_id="add-1",
        )
        groups.process.start(wait=180)

        outcome = await client.outcome("add-1", timeout=WAIT)
        assert outcome.accepted
        prompt = await client.prompt("v-outage", timeout=WAIT)
        fetched = await fetch_prompt(groups.process.url, "v-outage", token=groups.token(NURSE))
        assert fetched is not None and fetched.event.id == prompt.event.id
        # Known already: returned at once, nothing sent again.
        again = await client.add(PNR, actor=NURSE, group_code="COVID_19", command_id="add-1")
        assert again is outcome

    # A client started after the answers, from before the commands, still finds them.
    async with groups.client(since=before) as restarted:
        found = await restarted.outcome("add-1", timeout=WAIT)
        assert found.event.id == outcome.event.id
        assert (await restarted.prompt("v-outage", timeout=WAIT)).prompt_id == prompt.prompt_id

    events = await kafka.events(
        groups.topics.events, lambda es: any(e["data"].get("command_id") for e in es), timeout=10
    )
    answers = [e for e in events if e["data"].get("command_id") == "add-1"]
    assert [e["type"] for e in answers] == ["customer_group.added"], "one answer for two sends"


def _client_config(broker: AclBroker, user: str) -> KafkaConfig:
    settings = broker.settings(user)
    assert settings.sasl_password is not None
    return KafkaConfig(
        settings.bootstrap_servers,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=user,
        sasl_password=settings.sasl_password.get_secret_value(),
    )


async def test_over_sasl_each_system_needs_only_its_own_acls(
    acl_broker: AclBroker, database_url: str
) -> None:
    topics = Topics(
        **{name: getattr(acl_broker.topics, name) for name in Topics.__dataclass_fields__}
    )
    settings = GroupsSettingsBundle(
        app=AppSettings(app_env="test"),
        kafka=acl_broker.settings(PRINCIPALS.groups),
        topics=acl_broker.topics,
        database=DatabaseSettings(database_url=database_url),
        groups=GroupsSettings(consumer_group=acl_broker.groups_group),
    )
    vaccination_client = _client_config(acl_broker, PRINCIPALS.vaccination_client)
    async with (
        running_groups_service(settings),
        CustomerGroupsClient(
            _client_config(acl_broker, PRINCIPALS.booking_system),
            topics=topics,
            listen=False,
            source="/booking/system-a",
        ) as booking_system,
        CustomerGroupsClient(vaccination_client, topics=topics) as client,
    ):
        catalog = await booking_system.read_catalog(timeout=WAIT)
        assert catalog.version and catalog.group("INFLUENSA") is not None
        retired = catalog.group("COVID")
        assert retired is not None and retired.valid_to is not None
        await booking_system.publish_booking(
            "b-sasl",
            unit_id=NURSE.unit_id,
            start_time=datetime.now(UTC) + timedelta(hours=1),
            personnummer=PNR,
        )
        prompt = await client.start_vaccination(
            "v-sasl", actor=NURSE, personnummer=PNR, timeout=WAIT
        )
        added = await client.add(
            PNR, actor=NURSE, group_code="INFLUENSA", prompt_id=prompt.prompt_id, timeout=WAIT
        )
        assert added.accepted
        closed = await client.close_prompt(
            PNR, actor=NURSE, prompt_id=prompt.prompt_id, vaccination_id="v-sasl", timeout=WAIT
        )
        assert closed.confirmation is not None
        assert [m.group_code for m in closed.confirmation.memberships] == ["INFLUENSA"]
    # A wrong password is refused when the client starts, not at the first send.
    wrong = replace(vaccination_client, sasl_password="not-the-password")
    with pytest.raises(KafkaConnectionError):
        async with CustomerGroupsClient(wrong, topics=topics):
            pass
