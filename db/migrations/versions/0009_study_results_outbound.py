"""study results, outbound messages, counters, DICOM context

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 07:51:42.771850
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('metric_counters',
    sa.Column('name', sa.String(length=80), nullable=False),
    sa.Column('labels', sa.String(length=200), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name', 'labels', name=op.f('pk_metric_counters'))
    )
    op.create_table('study_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('group_key', sa.String(length=100), nullable=True),
    sa.Column('department_id', sa.Integer(), nullable=True),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('accession_number', sa.String(length=16), nullable=True),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('scope', sa.String(length=24), nullable=False),
    sa.Column('call', sa.String(length=16), nullable=True),
    sa.Column('probability', sa.Float(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('decided_by_image_id', sa.Integer(), nullable=True),
    sa.Column('model_version', sa.String(length=80), nullable=True),
    sa.Column('review_decision', sa.String(length=16), nullable=True),
    sa.Column('reviewer_id', sa.Integer(), nullable=True),
    sa.Column('open_flags', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('finalised_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['department_id'], ['departments.id'], name=op.f('fk_study_results_department_id_departments')),
    sa.ForeignKeyConstraint(['reviewer_id'], ['users.id'], name=op.f('fk_study_results_reviewer_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_study_results')),
    sa.UniqueConstraint('group_key', name=op.f('uq_study_results_group_key'))
    )
    with op.batch_alter_table('study_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_results_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_results_department_id'), ['department_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_results_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_results_study_date'), ['study_date'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_results_study_instance_uid'), ['study_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_results_updated_at'), ['updated_at'], unique=False)

    op.create_table('outbound_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_result_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('result_version', sa.Integer(), nullable=False),
    sa.Column('destination', sa.String(length=200), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['study_result_id'], ['study_results.id'], name=op.f('fk_outbound_messages_study_result_id_study_results')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbound_messages')),
    sa.UniqueConstraint('study_result_id', 'kind', 'result_version', name='uq_outbound_messages_result_kind_version')
    )
    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbound_messages_next_attempt_at'), ['next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbound_messages_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbound_messages_study_result_id'), ['study_result_id'], unique=False)
    # A reader's soft claim on a review flag (studies.reviews.claim); no foreign key: a hint, not a record.
    with op.batch_alter_table('review_flags', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('departments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('outbound', sa.JSON(), nullable=True))

    # SQLite rebuilds the table to add the foreign key; other tables' rows point at it.
    sqlite = op.get_bind().dialect.name == 'sqlite'
    if sqlite:
        op.execute('PRAGMA foreign_keys=OFF')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('accession_number', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('study_date', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('patient_sex', sa.String(length=1), nullable=True))
        batch_op.add_column(sa.Column('sop_class_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('not_applicable', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('original_purged_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('study_result_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_studies_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_study_date'), ['study_date'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_study_result_id'), ['study_result_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_studies_study_result_id_study_results'), 'study_results', ['study_result_id'], ['id'])
    if sqlite:
        op.execute('PRAGMA foreign_keys=ON')

    op.create_table('batch_rejections',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('batch_id', sa.Integer(), nullable=False),
    sa.Column('filename', sa.String(length=512), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_batch_rejections_batch_id_batches')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batch_rejections'))
    )
    with op.batch_alter_table('batch_rejections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batch_rejections_batch_id'), ['batch_id'], unique=False)
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    _rename_case_duplicates()
    op.create_index('uq_departments_name_lower', 'departments', [sa.text('lower(name)')], unique=True)

    _backfill()


def _rename_case_duplicates() -> None:
    """Departments whose names differ only in case ("radiology north") get their id appended, so the unique
    index on lower(name) can be made; nothing moves between departments: an admin renames or reassigns."""
    bind = op.get_bind()
    seen = set()
    for department_id, name in bind.execute(sa.text("SELECT id, name FROM departments ORDER BY id")).all():
        if name.lower() in seen:
            bind.execute(sa.text("UPDATE departments SET name = :n WHERE id = :i"),
                         {"n": f"{name[:110]} (#{department_id})", "i": department_id})
        seen.add(name.lower())


def _backfill() -> None:
    """Every existing image joins a study result: DICOM images by (department or uploader, StudyInstanceUID),
    other images one each. Results are left at version 0; `pneumoscreen db upgrade` then computes them."""
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT s.id, s.study_instance_uid, b.department_id, b.created_by FROM studies s "
        "JOIN batches b ON b.id = s.batch_id ORDER BY s.id")).all()
    results = sa.table('study_results', sa.column('id', sa.Integer), sa.column('group_key', sa.String),
                       sa.column('department_id', sa.Integer), sa.column('study_instance_uid', sa.String),
                       sa.column('scope', sa.String), sa.column('open_flags', sa.Integer),
                       sa.column('status', sa.String), sa.column('version', sa.Integer),
                       sa.column('created_at', sa.DateTime), sa.column('updated_at', sa.DateTime))
    now = sa.func.now()
    keys = {}
    for image_id, uid, department_id, created_by in rows:
        key = None if not uid else (f"d{department_id}:{uid}" if department_id is not None else f"u{created_by}:{uid}")
        result_id = keys.get(key) if key else None
        if result_id is None:
            result_id = bind.execute(results.insert().values(
                group_key=key, department_id=department_id, study_instance_uid=uid, scope='pending', open_flags=0,
                status='registered', version=0, created_at=now, updated_at=now).returning(results.c.id)).scalar_one()
            if key:
                keys[key] = result_id
        bind.execute(sa.text("UPDATE studies SET study_result_id = :r WHERE id = :i"), {"r": result_id, "i": image_id})



def downgrade() -> None:
    # SQLite rebuilds the table to drop a column; other tables' rows point at it, so check keys after, not during.
    sqlite = op.get_bind().dialect.name == 'sqlite'
    if sqlite:
        op.execute('PRAGMA foreign_keys=OFF')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_studies_study_result_id_study_results'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_studies_study_result_id'))
        batch_op.drop_index(batch_op.f('ix_studies_study_date'))
        batch_op.drop_index(batch_op.f('ix_studies_accession_number'))
        batch_op.drop_column('study_result_id')
        batch_op.drop_column('original_purged_at')
        batch_op.drop_column('not_applicable')
        batch_op.drop_column('sop_class_uid')
        batch_op.drop_column('patient_sex')
        batch_op.drop_column('acquired_at')
        batch_op.drop_column('study_date')
        batch_op.drop_column('accession_number')

    with op.batch_alter_table('departments', schema=None) as batch_op:
        batch_op.drop_column('outbound')
    if sqlite:
        op.execute('PRAGMA foreign_keys=ON')

    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbound_messages_study_result_id'))
        batch_op.drop_index(batch_op.f('ix_outbound_messages_state'))
        batch_op.drop_index(batch_op.f('ix_outbound_messages_next_attempt_at'))

    op.drop_table('outbound_messages')
    with op.batch_alter_table('review_flags', schema=None) as batch_op:
        batch_op.drop_column('claimed_until')
        batch_op.drop_column('claimed_by')
    with op.batch_alter_table('study_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_results_updated_at'))
        batch_op.drop_index(batch_op.f('ix_study_results_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_study_results_study_date'))
        batch_op.drop_index(batch_op.f('ix_study_results_status'))
        batch_op.drop_index(batch_op.f('ix_study_results_department_id'))
        batch_op.drop_index(batch_op.f('ix_study_results_accession_number'))

    op.drop_table('study_results')
    op.drop_table('metric_counters')
    # After the PRAGMA steps above: SQLite ignores the pragma inside a transaction these would open; its rebuild of
    # departments has already dropped the expression index there.
    op.execute('DROP INDEX IF EXISTS uq_departments_name_lower')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_column('expires_at')
    with op.batch_alter_table('batch_rejections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_batch_rejections_batch_id'))
    op.drop_table('batch_rejections')
