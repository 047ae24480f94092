"""The plain service's two tables (SQLAlchemy 2 declarative mapping), created at start."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import DateTime, ForeignKey, Index, String, Text, Uuid, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"

    personnummer: Mapped[str] = mapped_column(String(12), primary_key=True)
    first_name: Mapped[str | None] = mapped_column(Text)
    last_name: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (
        # One active membership per customer and group: a second add of it fails.
        Index(
            "ux_memberships_one_active_per_group",
            "personnummer",
            "group_code",
            unique=True,
            postgresql_where=text("status = 'active'"),
        ),
    )

    membership_id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    personnummer: Mapped[str] = mapped_column(
        String(12), ForeignKey("customers.personnummer"), index=True
    )
    group_code: Mapped[str] = mapped_column(String(64))
    subgroup_code: Mapped[str | None] = mapped_column(String(64))
    reference_code: Mapped[str | None] = mapped_column(String(64))
    valid_from: Mapped[date]
    valid_to: Mapped[date | None]
    version: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))  # active | historical | entered_in_error
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by_user: Mapped[str | None] = mapped_column(Text)
    created_by_unit: Mapped[str | None] = mapped_column(Text)
    updated_by_user: Mapped[str | None] = mapped_column(Text)
    updated_by_unit: Mapped[str | None] = mapped_column(Text)
