"""Errors with stable codes, and the one table of them.

Every failure a caller can cause or fix (bad input, missing weights, a corrupt checkpoint) is a
`PoseError` carrying a machine-readable ``code`` that never changes between releases, a human
message, and the HTTP status the serving layer answers with. Anything else is a bug.

`CODES` is the vocabulary: each code has one HTTP status wherever it appears (a route's answer,
a failed job's ``error``, the CLI's message), and a meaning. The OpenAPI document publishes it
(``x-error-codes``, and each route's responses list their codes), docs/serving.md prints it, and
a test holds every code raised in the project to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class ErrorCode:
    status: int  # the HTTP status of every answer carrying this code
    meaning: str  # what happened, and what the caller can do
    retry: bool = False  # the same request may succeed later (Retry-After says when)


def _codes(status: int, retry: bool = False, **meanings: str) -> dict[str, ErrorCode]:
    return {code: ErrorCode(status, meaning, retry) for code, meaning in meanings.items()}


CODES: dict[str, ErrorCode] = {
    # -- the request ------------------------------------------------------------------------
    **_codes(
        400,
        request_malformed="the request cannot be parsed (not JSON, a broken body)",
        multipart_invalid="the multipart body cannot be parsed, or has no boundary",
        image_missing="no file in the multipart field 'image'",
        video_missing="no file in the multipart field 'video'",
        image_empty="the image has 0 bytes",
        image_unreadable="the image data cannot be decoded (corrupt)",
        image_truncated="the JPEG data has no end-of-image marker",
        image_unsupported_format="not an image: JPEG, PNG, WebP, BMP or TIFF expected",
        image_invalid="not an image array (library and CLI callers)",
        image_shape="an image array of another shape than HxW, HxWx3 or HxWx4",
        image_dtype="an image array of another dtype than uint8",
        image_size_invalid="an image size that is not positive",
        image_too_elongated="an aspect ratio the detector cannot resize to its input",
        boxes_invalid="boxes are not an (N, 4) list of finite x1, y1, x2, y2 numbers",
        boxes_empty="an empty list of boxes",
        box_empty="a box of zero or negative size",
        box_outside_image="a box entirely outside the image",
        box_too_large="a box reaching more than one image size beyond the image",
        too_many_boxes="more boxes than limits.max_people",
        person_invalid="a tracker input that is not a person observation (library callers)",
        frame_order="frames given to the tracker out of order (library callers)",
        tracker_state_invalid="a tracker state that is not one this version wrote",
        video_empty="a video stream with no frames",
        video_corrupt="the video is truncated or its data cannot be decoded",
        video_unreadable="the video file cannot be read",
        path_invalid="an empty or unusable video_path (POST /pose/video)",
        path_not_a_file="a video_path naming a folder or a special file",
        range_invalid="a Range header that is not bytes=START-END",
        callback_url_invalid="a callback_url that is not an allowed http(s) URL (also: control characters or blanks in it, port 0)",
        callback_url_forbidden=(
            "a callback_url whose host resolves to an internal address, "
            "or to an IPv6 form of an IPv4 address (6to4, Teredo, NAT64, IPv4-mapped)"
        ),
        callback_url_unresolvable="a callback_url whose host does not resolve",
        callbacks_disabled="callback_url given, but this service makes no callbacks",
        idempotency_key_invalid="an Idempotency-Key outside 1 to 255 characters",
        state_invalid="a job state filter that is not a job state",
        paging_invalid="a limit or offset out of range",
        job_kind_invalid="a job kind other than video (library callers)",
        job_options_invalid="job options that are not JSON (library callers)",
        suffix_invalid="an upload suffix that is not like '.mp4' (library callers)",
        client_id_invalid="a client id outside 1 to 64 letters, digits, '.', '_' or '-'",
        vertices_npz_only="vertices asked for in JSON: they are written to the NPZ only",
        media_unsupported="a CLI input that is neither an image nor a video",
        image_folder_empty="a CLI image folder with no file matching --file-type",
        input_unreadable="a CLI input that cannot be read",
        output_format_unsupported="a CLI output file of a type this command does not write",
        unexpected_argument="a CLI argument this command does not take",
        import_source_missing="weights import without a PATH",
        result_unreadable="a file that is not a result document",
        result_mismatch="a result that does not belong to the clip it is rendered over",
    ),
    **_codes(401, unauthorized="no client key, or one no entry names (Authorization: Bearer <key>)"),
    **_codes(403, path_outside_media_root="a path outside the media folder (POST /pose/video)"),
    **_codes(
        404,
        not_found="no such route or page file",
        job_not_found="no such job, or another client's",
        path_not_found="no such file in the media folder",
        media_dir_not_configured="POST /pose/video is off: no media_dir is configured",
        overlay_not_requested="the job was submitted without render=true",
        track_not_found="no such track id in the result",
        no_tracks="the result has no confirmed track to export",
        result_not_found="no result file at the given path (CLI)",
    ),
    **_codes(405, method_not_allowed="the route does not take this method"),
    **_codes(406, not_acceptable="no representation matches the Accept header"),
    **_codes(
        409,
        job_not_finished="the job is still queued or running: no result yet",
        job_failed="the job failed: no result (its error says why)",
        job_cancelled="the job was cancelled: no result",
        cancelled="the job was cancelled (a failed job's code)",
        job_state_conflict="the job is not in the state the action needs",
        attempt_superseded="another attempt runs this job now (workers)",
        vertices_not_computed="the job was submitted without vertices=true",
        overlay_pending="the job succeeded and its overlay video is still being drawn: poll the job until overlay.state is ready",
    ),
    **_codes(
        413,
        request_too_large="the request body is larger than the limit",
        image_too_large="the image has more pixels than limits.max_pixels",
        too_many_images="more image fields in one request than limits.max_images_per_request",
        video_too_large="the video's frames have more pixels than the limit, or the file more bytes",
        video_too_long="the video is longer than the limit",
    ),
    **_codes(408, upload_too_slow="the request body arrived slower than jobs.min_upload_mbit_s after a grace period"),
    **_codes(499, client_disconnected="the client closed the connection before its request was read (logged, never sent)"),
    **_codes(416, range_not_satisfiable="a Range that starts past the end of the file"),
    **_codes(
        415,
        unsupported_media_type="a content type this route does not take",
        video_unsupported_format="not a video: MP4/MOV, Matroska/WebM or AVI expected",
    ),
    **_codes(
        422,
        request_invalid="a parameter or field of the wrong type or out of range",
        video_no_video_stream="a file with no video stream (audio only)",
        export_format_unknown="an export format this service does not write",
        detector_unknown="a person detector this installation does not have (vitdet, regnety)",
        idempotency_key_reused="the Idempotency-Key was used for another request",
        frame_range_invalid="a start_frame/end_frame that is not a whole number, or a start_s/end_s that is not a finite number",
        frame_range_mixed="a range in frames and in seconds at once: give start_frame/end_frame or start_s/end_s",
        frame_range_negative="a negative start or end of a range (only end_frame may be -1: to the end)",
        frame_range_empty="a range whose end is at or before its start, or that holds no frame of the video",
        frame_range_past_end="a range that starts after the video's last frame (at upload when the video says its length, else the job's failure)",
    ),
    **_codes(
        429,
        True,
        too_many_jobs="the job queue is full; retry after Retry-After seconds",
        client_job_limit="the client has jobs.max_jobs_per_client jobs queued or running; retry after Retry-After seconds",
    ),
    **_codes(
        500,
        internal_error="an unexpected server error (it is logged)",
        result_missing="the result or artifact of a succeeded job is not on disk",
        input_missing="a job with no input video",
        render_failed="the overlay video of a succeeded job could not be drawn (the job's result stands; the message says why)",
        job_checkpoint_invalid="a job's tracking checkpoint is not one this version wrote",
        auth_keys_invalid="the keys file or variable cannot be read (deploy)",
        auth_required="a non-loopback listen address without client keys (deploy)",
        auth_conflict="auth: none together with client keys (deploy)",
        callback_secrets_invalid="the per-client callback secrets cannot be read (deploy)",
        upload_timeout_too_short="video_limits.max_bytes cannot arrive at jobs.min_upload_mbit_s within request_timeout_s (deploy)",
        job_store_error="the job store refused a statement for a reason retrying does not fix (the message has its cause)",
        job_store_invalid="a job_store URL of an unknown scheme (deploy)",
        job_store_node_local="a node-local job store on a cluster of several nodes (deploy)",
        device_invalid="a device that is not a torch device (deploy)",
        device_unavailable="device cuda without CUDA (deploy)",
        dtype_invalid="a dtype other than float32, float16 or bfloat16 (deploy)",
    ),
    **_codes(
        507,
        True,
        storage_full="the disk budget for uploads and results is used up; retry after Retry-After seconds",
        client_storage_limit="the client's jobs would take more than jobs.max_bytes_per_client bytes; retry after deleting finished jobs",
    ),
    **_codes(
        503,
        True,
        overloaded="the service is at capacity; retry after Retry-After seconds",
        stage_unavailable="a model replica is restarting; retry",
        stage_timeout="a model stage took too long to answer; retry",
        interrupted="the job was started too many times without finishing (a failed job's code)",
        not_ready="some deployments are not ready yet",
        videos_unavailable="video jobs are not enabled in this deployment",
        data_dir_unavailable="the data folder cannot be used: video jobs are off, images keep working",
        job_store_unavailable="the job store cannot be reached (a store call retried a transient fault for a few seconds; Retry-After)",
        renderer_unavailable="the Renderer did not answer for a job's overlay after its tries (the job's result stands)",
    ),
    # -- model files: the service cannot start until they are fixed ----------------------------
    **_codes(
        503,
        weights_missing="a model file is not where it is looked for",
        weights_corrupt="a model file is unreadable or of the wrong size or contents",
        weights_not_vitdet="a detector checkpoint that is not ViTDet's cascade layout",
        weights_lock_invalid="the weights lock file cannot be read",
        weights_lock_mismatch="a model file differs from the size and sha256 the lock file recorded",
        download_failed="a model file could not be downloaded from any address",
        archive_corrupt="a weights archive that cannot be read",
        archive_unsafe="a weights archive with a member outside its folder",
        import_source_invalid="a weights import source that is neither a folder nor an archive",
        checkpoint_invalid="a file that is not a PyTorch checkpoint",
        checkpoint_mismatch="a checkpoint whose keys or shapes do not fit the model",
        model_config_invalid="a model config of another architecture",
        hmar_weights_keys="PHALP's HMAR weights do not match the appearance encoder",
        pose_predictor_config="PHALP's pose predictor config is of another kind",
        pose_predictor_keys="PHALP's pose predictor checkpoint has foreign keys",
        smpl_missing="the SMPL model was not found (exports, rendering)",
        smpl_unreadable="the SMPL model or its joint regressor is unreadable",
    ),
}


def status_of(code: str) -> int:
    """The HTTP status of ``code``; 500 for a code outside the table (a bug the tests catch)."""
    entry = CODES.get(code)
    return 500 if entry is None else entry.status


def codes_by_status(codes: Iterable[str]) -> dict[int, list[str]]:
    """``codes`` grouped by their status, each group in the order given."""
    out: dict[int, list[str]] = {}
    for code in codes:
        out.setdefault(CODES[code].status, []).append(code)
    return dict(sorted(out.items()))


class PoseError(Exception):
    """Base class: ``code`` is stable, ``message`` is for humans, ``status`` is the HTTP status."""

    status: int = 400

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status
        elif code in CODES:
            self.status = CODES[code].status
        self.details = details or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep code, status and details when the error crosses a process boundary (Ray pickles
        # exceptions raised in replicas); the default would call __init__ with the message only.
        return (type(self), (self.code, self.message), self.__dict__)

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": {"code", "message", "details"}}``."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class InputError(PoseError):
    """The request itself is wrong (unreadable image, bad boxes, wrong type): HTTP 4xx."""

    status = 400


class WeightsError(PoseError):
    """Model files are missing, corrupt or of the wrong kind: the service cannot start."""

    status = 503
