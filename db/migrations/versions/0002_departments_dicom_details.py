"""departments, duplicates, dicom attributes, model details

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 16:11:28.303600
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('departments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_departments')),
    sa.UniqueConstraint('name', name=op.f('uq_departments_name'))
    )
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('department_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_batches_department_id'), ['department_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_batches_department_id_departments'), 'departments', ['department_id'], ['id'])

    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('details', sa.JSON(), nullable=True))

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('duplicate_of_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('study_instance_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('series_instance_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('sop_instance_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('modality', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('view_position', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('patient_age', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('body_part', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_studies_study_instance_uid'), ['study_instance_uid'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_studies_duplicate_of_id_studies'), 'studies', ['duplicate_of_id'], ['id'])

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('department_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_users_department_id'), ['department_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_users_department_id_departments'), 'departments', ['department_id'], ['id'])



def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_users_department_id_departments'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_users_department_id'))
        batch_op.drop_column('department_id')

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_studies_duplicate_of_id_studies'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_studies_study_instance_uid'))
        batch_op.drop_column('body_part')
        batch_op.drop_column('patient_age')
        batch_op.drop_column('view_position')
        batch_op.drop_column('modality')
        batch_op.drop_column('sop_instance_uid')
        batch_op.drop_column('series_instance_uid')
        batch_op.drop_column('study_instance_uid')
        batch_op.drop_column('duplicate_of_id')

    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_column('details')

    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_batches_department_id_departments'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_batches_department_id'))
        batch_op.drop_column('department_id')

    op.drop_table('departments')
