"""Coverage-guided fuzzing of the event decoder with atheris (libFuzzer), run by
``tests/faults/test_fuzz.py`` in a subprocess for a bounded number of runs:

    python -m tests.faults._atheris_decoder CORPUS_DIR -runs=N

Any input must decode into a contract event or raise a :class:`DecodeError`; any other
exception is a finding (libFuzzer stops, prints the input and exits non-zero). Run with
``-print_final_stats=1`` for the number of inputs tried (``stat::number_of_executed_units``).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from schemas.codec import AvroCodec, DecodeError

CODEC = AvroCodec()
REASONS = {"unknown_wire_format", "unknown_schema", "malformed_avro", "contract_violation"}


def one_input(data: bytes) -> None:
    try:
        CODEC.decode_event(data)
    except DecodeError as exc:
        if exc.reason not in REASONS:
            raise AssertionError(f"undocumented reason {exc.reason}") from None


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
