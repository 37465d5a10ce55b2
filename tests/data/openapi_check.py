"""Checks keygate's OpenAPI document and real answers against it (run by tests/openapi.rs).

Usage: openapi_check.py DOCUMENT SAMPLES

DOCUMENT is the JSON served at /v1/openapi.json. SAMPLES is a JSON list of answers the test
received: {"method", "path" (the template, as the document names it), "status", "body"}.
Prints one line per problem and exits 1 if there is any.
"""

import json
import sys

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

doc = json.load(open(sys.argv[1]))
samples = json.load(open(sys.argv[2]))
problems = []

# The document itself, against the OpenAPI 3.1 specification's schema.
try:
    validate(doc)
except Exception as e:  # noqa: BLE001 - report whatever the validator found
    problems.append(f"the document is not valid OpenAPI 3.1: {e}")

for s in samples:
    where = f"{s['method'].upper()} {s['path']} -> {s['status']}"
    operation = doc["paths"].get(s["path"], {}).get(s["method"].lower())
    if operation is None:
        problems.append(f"{where}: the document has no such operation")
        continue
    answer = operation["responses"].get(str(s["status"]))
    if answer is None:
        problems.append(f"{where}: the document does not list this status")
        continue
    content = answer.get("content", {})
    media = next((m for m in content if "json" in m), None)
    if media is None:
        problems.append(f"{where}: the document gives this answer no JSON body")
        continue
    schema = dict(content[media]["schema"])
    schema["components"] = doc.get("components", {})
    errors = sorted(Draft202012Validator(schema).iter_errors(s["body"]), key=str)
    for e in errors[:3]:
        path = "/".join(str(p) for p in e.absolute_path)
        problems.append(f"{where}: at /{path}: {e.message}")

for p in problems:
    print(p)
print(f"checked the document and {len(samples)} answers: {len(problems)} problems")
sys.exit(1 if problems else 0)
