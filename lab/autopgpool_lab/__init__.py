"""Local lab of systemd-nspawn machines for proving the autopgpool roles (lab tooling, not product)."""
