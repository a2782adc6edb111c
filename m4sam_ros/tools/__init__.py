"""Offline verbs of the `m4sam` command that sit on top of the tracker and the engines:
export, build-engine, bench (and the parity checks they share)."""
