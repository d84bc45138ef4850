"""Puts tests/ on sys.path (pytest does so for a conftest outside a package), so every suite can import
the shared helpers in tests/demo_example.py."""
