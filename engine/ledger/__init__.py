"""Offline settlement of files, the summary finance reconciles, and record-for-record
comparison of two settlements (stream vs offline)."""
