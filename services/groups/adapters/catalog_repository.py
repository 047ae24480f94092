"""The catalog tables, read and written directly (rare, operator-driven), apart from the
batch write path of `repository` and `batch_writer`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from typing import Any

from sqlalchemy import RowMapping, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.groups.adapters.orm import catalog_groups, catalog_subgroups, memberships
from services.groups.domain.catalog import Catalog, version_key


class CatalogRepository:
    """The catalog tables, read and written directly (rare, operator-driven)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._c = connection

    async def import_catalog(self, catalog: Catalog) -> None:
        """Upsert every group and subgroup; memberships are not touched, nothing is deleted.

        `catalog` must hold every code the tables hold (`Catalog.keeping_codes_of`), so
        each row gets its place and the version of this import."""
        for position, group in enumerate(catalog.groups):
            g = pg_insert(catalog_groups).values(
                code=group.code,
                name=group.name,
                valid_from=group.valid_from,
                valid_to=group.valid_to,
                position=position,
                catalog_version=catalog.version,
            )
            await self._c.execute(
                g.on_conflict_do_update(
                    index_elements=[catalog_groups.c.code],
                    set_={
                        k: g.excluded[k]
                        for k in ("name", "valid_from", "valid_to", "position", "catalog_version")
                    },
                )
            )
            for sub_position, sub in enumerate(group.subgroups):
                rule = None
                if sub.rule is not None:
                    rule = {
                        "min_age": sub.rule.min_age,
                        "max_age": sub.rule.max_age,
                        "vaccine_codes": sorted(sub.rule.vaccine_codes),
                    }
                s = pg_insert(catalog_subgroups).values(
                    group_code=group.code,
                    code=sub.code,
                    name=sub.name,
                    valid_from=sub.valid_from,
                    valid_to=sub.valid_to,
                    position=sub_position,
                    rule=rule,
                )
                await self._c.execute(
                    s.on_conflict_do_update(
                        index_elements=[catalog_subgroups.c.group_code, catalog_subgroups.c.code],
                        set_={
                            k: s.excluded[k]
                            for k in ("name", "valid_from", "valid_to", "position", "rule")
                        },
                    )
                )

    async def load_catalog(self) -> Catalog | None:
        group_rows = (
            await self._c.execute(
                select(catalog_groups).order_by(catalog_groups.c.position, catalog_groups.c.code)
            )
        ).all()
        if not group_rows:
            return None
        sub_rows = (
            await self._c.execute(
                select(catalog_subgroups).order_by(
                    catalog_subgroups.c.group_code,
                    catalog_subgroups.c.position,
                    catalog_subgroups.c.code,
                )
            )
        ).all()
        subs: dict[str, list[dict[str, Any]]] = {}
        for s in sub_rows:
            subs.setdefault(s.group_code, []).append(
                {
                    "code": s.code,
                    "name": s.name,
                    "valid_from": s.valid_from.isoformat(),
                    "valid_to": s.valid_to.isoformat() if s.valid_to else None,
                    "rule": s.rule,
                }
            )
        data = {
            "version": max((r.catalog_version for r in group_rows), key=version_key),
            "groups": [
                {
                    "code": g.code,
                    "name": g.name,
                    "valid_from": g.valid_from.isoformat(),
                    "valid_to": g.valid_to.isoformat() if g.valid_to else None,
                    "subgroups": subs.get(g.code, []),
                }
                for g in group_rows
            ],
        }
        return Catalog.from_dict(data)

    async def active_memberships_in(
        self, group_codes: Collection[str], *, chunk: int = 1000
    ) -> AsyncGenerator[RowMapping, None]:
        """Active memberships (no `valid_to`) in these groups, in id order, streamed:
        `membership_id`, `group_code`, `subgroup_code`, `valid_from` and nothing about
        the customer (a catalog dry run prints them)."""
        m = memberships.c
        statement = (
            select(m.membership_id, m.group_code, m.subgroup_code, m.valid_from)
            .where(m.valid_to.is_(None), m.group_code.in_(sorted(group_codes)))
            .order_by(m.membership_id)
            .execution_options(yield_per=chunk)
        )
        async with self._c.stream(statement) as result:
            async for row in result.mappings():
                yield row
