"""create item

Revision ID: e2b1f0c9a7d4
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "e2b1f0c9a7d4"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("item", sa.Column("id", sa.Integer, primary_key=True), sa.Column("title", sa.String(255)))


def downgrade() -> None:
    op.drop_table("item")
