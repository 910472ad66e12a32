"""item owner

Revision ID: 5c3d9a1b2e8f
Revises: e2b1f0c9a7d4
"""
import sqlalchemy as sa
from alembic import op

revision = "5c3d9a1b2e8f"
down_revision = "e2b1f0c9a7d4"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("item", sa.Column("owner", sa.String(255)))


def downgrade() -> None:
    op.drop_column("item", "owner")
