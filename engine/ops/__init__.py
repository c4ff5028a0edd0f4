"""Operating the engine: health endpoints, ``mynapoint status``, log formats."""
