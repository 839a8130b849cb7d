"""The safety net: registered values never leave as text, whatever path the text takes."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from sandboxer import redaction
from sandboxer.cli.main import _report
from sandboxer.errors import ProvisionFailed

CANARY = "cnry-6b0f2a9e41d3"


def test_redact_longest_first_and_extra_values() -> None:
    redaction.register([CANARY, CANARY[:8]])
    assert redaction.redact(f"a {CANARY} b {CANARY[:8]} c") == "a *** b *** c"
    assert redaction.redact("x other-1234 y", extra=["other-1234"]) == "x *** y"
    redaction.unregister([CANARY, CANARY[:8]])
    assert redaction.redact(CANARY) == CANARY


def test_registration_is_counted() -> None:
    redaction.register([CANARY])
    redaction.register([CANARY])
    redaction.unregister([CANARY])
    assert redaction.redact(CANARY) == "***"
    redaction.unregister([CANARY])
    assert redaction.redact(CANARY) == CANARY


def test_errors_render_without_values(capsys: pytest.CaptureFixture[str]) -> None:
    redaction.register([CANARY])
    e = ProvisionFailed(f"boom {CANARY}", hint=f"hint {CANARY}")
    assert CANARY not in e.render()
    assert CANARY not in str(e)
    assert _report(RuntimeError(f"raw {CANARY}"), as_json=True) == 1
    out, err = capsys.readouterr()
    assert CANARY not in out + err
    assert "raw ***" in err


def test_logging_is_scrubbed_at_every_level(caplog: pytest.LogCaptureFixture) -> None:
    redaction.install()
    redaction.register([CANARY])
    log = logging.getLogger("anything.at.all")
    with caplog.at_level(logging.DEBUG):
        log.debug("value %s", CANARY)
        log.warning(f"f-string {CANARY}")  # noqa: G004 - exactly the bug the net catches
        try:
            raise ValueError(CANARY)
        except ValueError:
            log.exception("failed")
    assert len(caplog.records) == 3
    assert CANARY not in caplog.text
    for record in caplog.records:
        assert CANARY not in record.getMessage()
        assert CANARY not in (record.exc_text or "")


def test_filter_on_a_handler() -> None:
    redaction.register([CANARY])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "v=%s", (CANARY,), None)
    assert redaction.RedactingFilter().filter(record) is True
    assert record.getMessage() == "v=***"


def test_the_first_registered_value_puts_the_net_on_logging() -> None:
    # A fresh interpreter: this one's net is up already. Until a value is registered the
    # module needs no logging (the CLI's thin paths never hold one); from then on a
    # record made anywhere is scrubbed, with no install() call by the process.
    code = (
        "import sys\n"
        "from sandboxer import redaction\n"
        "assert 'logging' not in sys.modules, 'imported logging early'\n"
        f"redaction.register([{CANARY!r}])\n"
        "import logging\n"
        "r = logging.getLogger('x').makeRecord('x', 30, 'f', 1, 'v=%s', "
        f"({CANARY!r},), None)\n"
        "print(r.getMessage())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "v=***\n"
