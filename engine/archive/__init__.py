"""The redacted archive of the raw input: the system of record for replays."""
