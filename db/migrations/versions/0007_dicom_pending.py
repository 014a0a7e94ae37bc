"""dicom pending

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 07:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dicom_pending',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('filename', sa.String(length=512), nullable=False),
    sa.Column('storage_key', sa.String(length=128), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dicom_pending'))
    )
    with op.batch_alter_table('dicom_pending', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dicom_pending_calling_ae'), ['calling_ae'], unique=False)
        batch_op.create_index(batch_op.f('ix_dicom_pending_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_dicom_pending_study_uid'), ['study_uid'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('dicom_pending', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dicom_pending_study_uid'))
        batch_op.drop_index(batch_op.f('ix_dicom_pending_received_at'))
        batch_op.drop_index(batch_op.f('ix_dicom_pending_calling_ae'))

    op.drop_table('dicom_pending')
