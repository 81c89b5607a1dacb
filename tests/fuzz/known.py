"""Short-run cases that fail today, by case id, with their failure class.

Each runs as ``xfail(strict=True)``: when the fix for its class lands, the case passes,
the test turns red, and its line here must go.
"""

KNOWN: dict[str, str] = {
    "spec-encodings.yaml_huge_int-1552accb10": (
        "crash: OverflowError in frontends/spec.py:_add_args — a number argument too "
        "large for a float (a YAML integer of 400 digits)"
    ),
    "spec-encodings.yaml_null_key-88c81b7814": (
        "crash: ValueError 'None cannot be a node' in frontends/spec.py:_define — a YAML "
        "null key (~) as a node name"
    ),
    "spec-names.symbol-ea2b048aaa": (
        "crash: error line names no file — a symbolic size named by a Python keyword "
        "('class'): 'graphgen: error: 'class' is not a dimension expression: …'"
    ),
}
