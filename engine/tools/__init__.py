"""File tools around the engine: offline ``settle`` and its summary, ``compare``
(stream vs offline), ``publish`` and ``collect`` (files to and from Kafka),
``generate`` (synthetic campaign data) and the ``demo``."""
