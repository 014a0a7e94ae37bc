"""review flag reasons as a list

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 06:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

flags = sa.table('review_flags', sa.column('id', sa.Integer), sa.column('reason', sa.String),
                 sa.column('reasons', sa.JSON))


def upgrade() -> None:
    with op.batch_alter_table('review_flags', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reasons', sa.JSON(), nullable=True))
    connection = op.get_bind()
    for flag_id, reason in connection.execute(sa.select(flags.c.id, flags.c.reason)).all():
        connection.execute(flags.update().where(flags.c.id == flag_id)
                           .values(reasons=[r for r in (reason or '').split(',') if r]))
    with op.batch_alter_table('review_flags', schema=None) as batch_op:
        batch_op.alter_column('reasons', existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column('reason')


def downgrade() -> None:
    with op.batch_alter_table('review_flags', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reason', sa.String(length=255), nullable=True))
    connection = op.get_bind()
    for flag_id, reasons in connection.execute(sa.select(flags.c.id, flags.c.reasons)).all():
        connection.execute(flags.update().where(flags.c.id == flag_id).values(reason=','.join(reasons or [])))
    with op.batch_alter_table('review_flags', schema=None) as batch_op:
        batch_op.alter_column('reason', existing_type=sa.String(length=255), nullable=False)
        batch_op.drop_column('reasons')
