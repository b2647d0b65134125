"""Prints one field of a JSON report the binary wrote (scripts read these instead of its
printed tables): `python3 scripts/json_field.py FILE KEY[.KEY...]`, e.g.
`runs/a/similarity.json proposed_plan` or `convert.json calibration.seconds`."""
import json
import sys

value = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    value = value[int(key)] if isinstance(value, list) else value[key]
print(value)
