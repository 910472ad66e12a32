"""index orders by user and date

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 21:40:00

"""
from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("orders_user_created_idx", "orders", ["user_id", "created_at"])


def downgrade() -> None:
    op.drop_index("orders_user_created_idx", table_name="orders")
