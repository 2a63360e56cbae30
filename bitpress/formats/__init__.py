"""Compressed formats: the floor between passes (which produce them) and backends (which consume them).

A format is a compressed op (its registration and reference semantics), its packed layout and
pack/unpack helpers, a typed view of its attributes, and the integer arithmetic its kernels share.
This package imports only `bitpress.compiler` (checked by import-linter in `make lint`).
"""
