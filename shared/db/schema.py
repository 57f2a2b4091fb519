"""SQLAlchemy 2 typed models. The database is the source of truth; Redis only wakes workers.

Migrations live in ``shared/db/migrations``; a change here needs a new revision there
(``tests/unit/test_migrations.py`` fails if the two drift apart).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names let Alembic alter them on SQLite (batch mode) and PostgreSQL alike.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _tz() -> DateTime:
    return DateTime(timezone=True)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[str] = mapped_column(String(16), default="routine")
    mode: Mapped[str] = mapped_column(String(16), default="distributed")
    submitted: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(_tz())

    images: Mapped[list[Image]] = relationship(back_populates="batch")


class Study(Base):
    """One exam, identified by its StudyInstanceUID."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    # The exam refresh a save owes, recorded in the save's own transaction: each save that
    # changes one of the study's images adds 1 to ``exam_inputs_seq``; a refresh that
    # computes the exam's result sets ``exam_result_seq`` to the count it read before the
    # images. While the first is larger, the stored result may lack a view (its refresh
    # failed, or the worker died before it) and the follow-up recomputes it
    # (``shared.exams.studies_awaiting_result``). Two counters, never reset, so a refresh
    # that read older images can never clear a mark made after its read.
    exam_inputs_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    exam_result_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    images: Mapped[list[Image]] = relationship(back_populates="study")


class Image(Base):
    """One file. ``identity`` (SOPInstanceUID or content hash) makes resubmission a no-op."""

    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_batch_state", "batch_id", "state"),
        Index("ix_images_state_enqueued", "state", "enqueued_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity: Mapped[str] = mapped_column(String(128), unique=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    source: Mapped[str] = mapped_column(Text)
    # Where `mammo watch --after move` put the file once finished (processed/ or failed/):
    # the exam report draws the view from there.
    archived_path: Mapped[str | None] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    laterality: Mapped[str | None] = mapped_column(String(1))
    view: Mapped[str | None] = mapped_column(String(8))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    manufacturer_model: Mapped[str | None] = mapped_column(String(64))
    # Ingestion metadata (DICOM header or CSV manifest); see shared/imaging/readers.
    spacing_row_mm: Mapped[float | None] = mapped_column(Float)
    spacing_column_mm: Mapped[float | None] = mapped_column(Float)
    view_flags: Mapped[str | None] = mapped_column(String(128))  # "magnification,spot_..."
    burned_in_annotation: Mapped[bool | None] = mapped_column(Boolean)
    voi: Mapped[str | None] = mapped_column(String(200))  # which VOI LUT/window was applied
    # A label given with the file (manifest), for evaluation; never an input to the model.
    reference_label: Mapped[str | None] = mapped_column(String(16))
    # The pixel data's transfer syntax, length and a hash of chunks sampled from it
    # (``shared.imaging.pixel_fingerprint``): a file sent again under this image's SOP
    # Instance UID with other pixels is another image (a UID reused), not a copy. NULL for
    # non-DICOM files, pixels that could not be sampled, and images registered before it.
    pixel_fingerprint: Mapped[str | None] = mapped_column(String(128))
    # Where its laterality, view and exam came from (``producer.registration``): stated
    # ('header': a DICOM's; 'manifest': a manifest row) or only inferred ('filename': the
    # file-name convention; 'none': nothing, read alone). A file known by its bytes sent
    # again with a manifest row corrects inferred values, never stated ones. NULL: a
    # refusal recorded unread, or registered before it was kept (taken as stated; migration
    # 0016 marks the rows it can tell were inferred).
    metadata_origin: Mapped[str | None] = mapped_column(String(16))

    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claim_token: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    enqueued_at: Mapped[datetime | None] = mapped_column(_tz())
    # When a process last put the image back in the queue to send its message itself (a
    # claim handed back, a re-score); NULL: not since its registration (a retried failure
    # is registered anew: its created_at reset).
    # While ``enqueued_at`` is NULL the image is owed a message, and the sweeper leaves it
    # to that process for its usual wait, counted from here or from ``created_at``,
    # whichever is later (``lifecycle.waiting_since``); unless that process gave up on
    # the send and left the image to the sweeper (``lifecycle.owe_message``, marked in the
    # queued row's otherwise unused ``claim_token``), which sends it at its next pass.
    requeued_at: Mapped[datetime | None] = mapped_column(_tz())
    claimed_at: Mapped[datetime | None] = mapped_column(_tz())
    finished_at: Mapped[datetime | None] = mapped_column(_tz())

    batch: Mapped[Batch] = relationship(back_populates="images")
    study: Mapped[Study | None] = relationship(back_populates="images")
    predictions: Mapped[list[Prediction]] = relationship(back_populates="image")


class DuplicateSubmission(Base):
    """A file submitted again (same SOP Instance UID or same bytes): no new image, no new
    prediction; this row says which batch sent it, from where, and which image it repeats."""

    __tablename__ = "duplicate_submissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", "sha256", name="uq_model_versions"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    sha256: Mapped[str] = mapped_column(String(64))
    preprocessing_version: Mapped[str] = mapped_column(String(20))
    classes: Mapped[list[str]] = mapped_column(JSON)
    input_size: Mapped[list[int]] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(Text)
    # The model's bilateral head (metadata "bilateral.head"; models.bilateral), or NULL: exam
    # results read each breast against the other with it, wherever the results are refreshed.
    bilateral: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The model's metadata seal (models.registry.metadata_seal: its head, bilateral head,
    # input size...): one name, version and sha256 is one seal, so that exam results read
    # with another head never carry this identity (models.activation refuses it). NULL:
    # registered before seals were kept; the next registration or activation records it.
    metadata_seal: Mapped[str | None] = mapped_column(String(80), nullable=True)
    # Set by `mammo models activate`: workers left at MAMMO_MODEL=default run this one.
    active: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())


class Prediction(Base):
    """Exactly one per image per model version, written by upsert."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("image_id", "model_version_id", name="uq_predictions_image_model"),
        Index("ix_predictions_label_suspicion", "label", "suspicion"),
        # An image's first or latest prediction from the index alone (migration 0018):
        # with image_id only, PostgreSQL without statistics walked the primary key instead.
        Index("ix_predictions_image_id_id", "image_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    preprocessing_version: Mapped[str] = mapped_column(String(20))
    label: Mapped[str] = mapped_column(String(16))
    p_normal: Mapped[float] = mapped_column(Float)
    p_benign: Mapped[float] = mapped_column(Float)
    p_malignant: Mapped[float] = mapped_column(Float)
    suspicion: Mapped[int] = mapped_column(Integer)
    decode_ms: Mapped[float] = mapped_column(Float)
    preprocess_ms: Mapped[float] = mapped_column(Float)
    infer_ms: Mapped[float] = mapped_column(Float)
    # One id per forward pass: predictions sharing it were computed in one batched call.
    forward_pass_id: Mapped[str] = mapped_column(String(36))
    forward_pass_size: Mapped[int] = mapped_column(Integer)
    heatmap_path: Mapped[str | None] = mapped_column(Text)
    # Where the model looked: P(abnormal) per location as an 8-bit PNG (a few hundred bytes),
    # in the model's input frame; models.heatmaps.decode_png reads it back.
    heatmap_png: Mapped[bytes | None] = mapped_column(LargeBinary)
    # How the file was read where a reader should know it (inverted, EXIF-rotated, value
    # range taken from the pixels, NaN pixels...): {kind: sentence}, worker.decoding's
    # input_notes; {} for a plain reading, NULL when scored before they were kept.
    input_notes: Mapped[dict[str, str] | None] = mapped_column(JSON)
    # The readers' version the file was read with (shared.imaging.reader_version), NULL when
    # scored by a release before it was kept: `mammo rescore --reread` finds the others.
    reader_version: Mapped[str | None] = mapped_column(String(20), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200))
    # Indexed: `mammo status` lists the workers that wrote predictions lately (0018).
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now(),
                                                 index=True)

    image: Mapped[Image] = relationship(back_populates="predictions")
    model_version: Mapped[ModelVersion] = relationship()


class ExamResult(Base):
    """One exam-level result per study and version; a late image adds a version.

    The current result has ``superseded_at`` NULL; superseded ones are kept for audit.
    ``status`` is ``complete`` (4 standard views done) or ``incomplete`` (the exam timeout
    passed first): incomplete results carry scores for what arrived, and flags saying so.
    """

    __tablename__ = "exam_results"
    __table_args__ = (
        UniqueConstraint("study_id", "version", name="uq_exam_results_study_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    label: Mapped[str | None] = mapped_column(String(16))
    p_malignant: Mapped[float | None] = mapped_column(Float)
    suspicion: Mapped[int | None] = mapped_column(Integer)
    per_breast: Mapped[dict[str, object]] = mapped_column(JSON)
    views: Mapped[list[str]] = mapped_column(JSON)
    missing_views: Mapped[list[str]] = mapped_column(JSON)
    flags: Mapped[list[str]] = mapped_column(JSON)
    n_images: Mapped[int] = mapped_column(Integer)
    n_failed: Mapped[int] = mapped_column(Integer)
    # sha256 over the (image, prediction, state) triples it was computed from: unchanged
    # inputs give the same signature, so refreshing again is a no-op.
    signature: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    superseded_at: Mapped[datetime | None] = mapped_column(_tz())



class Notification(Base):
    """One notification per channel, event and subject, claimed by insert-or-nothing.

    The unique key makes delivery exactly-once across worker processes and redelivered
    messages: only the process whose insert created the row sends. ``status`` is
    ``pending`` while it sends, then ``sent`` or ``failed`` (with ``last_error``).
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("channel", "event", "subject_key", name="uq_notifications_subject"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))  # email | webhook
    event: Mapped[str] = mapped_column(String(32))  # batch_complete | exam_alert
    subject_key: Mapped[str] = mapped_column(String(64))  # "batch:12", "study:7", "image:9"
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"))
    # The image of an alert for an image scored outside any exam (subject "image:9").
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    claimed_at: Mapped[datetime | None] = mapped_column(_tz())
    sent_at: Mapped[datetime | None] = mapped_column(_tz())

# The drop-folder watcher reconciles each scan against the database by source path.
Index("ix_images_source", Image.source)
