"""department qa share

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 06:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('departments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('qa_share', sa.Float(), nullable=True))



def downgrade() -> None:
    # SQLite rebuilds the table to drop a column; other tables' rows point at it, so check keys after, not during.
    sqlite = op.get_bind().dialect.name == 'sqlite'
    if sqlite:
        op.execute('PRAGMA foreign_keys=OFF')
    with op.batch_alter_table('departments', schema=None) as batch_op:
        batch_op.drop_column('qa_share')
    if sqlite:
        op.execute('PRAGMA foreign_keys=ON')

