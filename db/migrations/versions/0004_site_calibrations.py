"""site calibrations

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 06:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('site_calibrations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('department_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('band_low', sa.Float(), nullable=False),
    sa.Column('miss_rate_target', sa.Float(), nullable=False),
    sa.Column('n_normal', sa.Integer(), nullable=False),
    sa.Column('n_pneumonia', sa.Integer(), nullable=False),
    sa.Column('sensitivity', sa.Float(), nullable=False),
    sa.Column('specificity', sa.Float(), nullable=False),
    sa.Column('miss_rate', sa.Float(), nullable=False),
    sa.Column('miss_rate_upper', sa.Float(), nullable=False),
    sa.Column('review_load', sa.Float(), nullable=False),
    sa.Column('model_version', sa.String(length=80), nullable=False),
    sa.Column('data_sha256', sa.String(length=64), nullable=False),
    sa.Column('roc_png', sa.LargeBinary(), nullable=True),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_site_calibrations_created_by_users')),
    sa.ForeignKeyConstraint(['department_id'], ['departments.id'], name=op.f('fk_site_calibrations_department_id_departments')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_site_calibrations'))
    )
    with op.batch_alter_table('site_calibrations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_site_calibrations_department_id'), ['department_id'], unique=False)

    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('site_calibration_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_predictions_site_calibration_id_site_calibrations'), 'site_calibrations', ['site_calibration_id'], ['id'])



def downgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_predictions_site_calibration_id_site_calibrations'), type_='foreignkey')
        batch_op.drop_column('site_calibration_id')

    with op.batch_alter_table('site_calibrations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_site_calibrations_department_id'))

    op.drop_table('site_calibrations')
