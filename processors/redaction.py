"""Secret-looking values caught at a processor: replaced and flagged, never stored."""

from __future__ import annotations

import logging

from pydantic import ValidationError

from schemas.codec import ContractViolationError
from schemas.models import CustodyEvent, describe_validation_error, validate_event
from schemas.secrets import find_secrets, redact_secrets

_log = logging.getLogger("custody.redaction")


def redacted(event: CustodyEvent) -> CustodyEvent:
    """The event with secret-looking values replaced, flagged in its attributes
    (``custody.redacted``: the fields) and in the log, so no secret reaches state, alerts
    or storage. The hash chain still covers the original bytes, so a chain check shows
    that the stored event is not the one published."""
    data = event.model_dump()
    findings = find_secrets(data)
    if not findings:
        return event
    fields = ",".join(sorted({f.field for f in findings}))
    _log.warning("redacted secret-looking values in event %s: %s", event.event_id, fields)
    clean = redact_secrets(data)
    clean["attributes"] = {**clean["attributes"], "custody.redacted": fields[:1000]}
    try:
        return validate_event(clean)
    except ValidationError as exc:
        # e.g. the flag is one attribute too many: the record cannot be kept clean.
        raise ContractViolationError(
            f"redacted event invalid: {describe_validation_error(exc)}"
        ) from None
