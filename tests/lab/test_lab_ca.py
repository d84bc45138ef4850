"""The lab CA (lab/autopgpool_lab/ca.py): made once, kept across `labctl up`, one certificate per machine."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509

from autopgpool.tls import check_client_tls
from autopgpool_lab import ca
from autopgpool_lab.config import plan_machines


def test_ensure_issues_once_and_keeps_the_ca(tmp_path: Path) -> None:
    machines = plan_machines(2)
    assert ca.ensure(tmp_path, machines) == ["pg1", "pool1", "pool2"]
    first_ca = (tmp_path / "ca.crt").read_bytes()
    assert ca.ensure(tmp_path, machines) == []
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pool1.key").stat().st_mode) == 0o600
    # A third pooler gets its certificate from the same CA; the others are kept.
    assert ca.ensure(tmp_path, plan_machines(3)) == ["pool3"]
    assert (tmp_path / "ca.crt").read_bytes() == first_ca
    problems = check_client_tls(
        (tmp_path / "pool3.crt").read_text(),
        (tmp_path / "pool3.key").read_text(),
        first_ca.decode(),
        names=["pool3", "10.231.0.13"],
        min_days=300,
    )
    assert problems == []
    cert = x509.load_pem_x509_certificate((tmp_path / "pg1.crt").read_bytes())
    assert cert.subject.rfc4514_string().startswith("CN=pg1")
