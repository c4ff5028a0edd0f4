"""Files in and out: input readers (JSON Lines, Parquet), output tables and their
Arrow schemas (the published contract of grants.parquet / rejections.parquet)."""
