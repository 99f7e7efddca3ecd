"""Private helpers of :mod:`core`; nothing here is public API."""
