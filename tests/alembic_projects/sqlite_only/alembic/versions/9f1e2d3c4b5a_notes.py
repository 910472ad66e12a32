"""notes"""
import sqlalchemy as sa
from alembic import op

revision = "9f1e2d3c4b5a"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True), sa.Column("body", sa.Text))


def downgrade() -> None:
    op.drop_table("notes")
