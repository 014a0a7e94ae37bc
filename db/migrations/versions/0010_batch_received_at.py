"""batches.received_at: a batch is taken in chunk by chunk, and is `receiving` until its last file is stored

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 11:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('received_at', sa.DateTime(timezone=True), nullable=True))
    # Every batch before this revision was taken in whole, in one request.
    op.execute('UPDATE batches SET received_at = created_at')


def downgrade() -> None:
    # SQLite rebuilds the table to drop a column; other tables' rows point at it, so check keys after, not during.
    sqlite = op.get_bind().dialect.name == 'sqlite'
    if sqlite:
        op.execute('PRAGMA foreign_keys=OFF')
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_column('received_at')
    if sqlite:
        op.execute('PRAGMA foreign_keys=ON')
