"""Short-run cases that fail today, by case id, with their failure class.

Each runs as ``xfail(strict=True)``: when the fix for its class lands, the case passes,
the test turns red, and its line here must go.
"""

KNOWN: dict[str, str] = {}
