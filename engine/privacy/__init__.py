"""What the engine holds about a person, and where (docs/PRIVACY.md)."""
