"""The training and validation files of scripts/experiment_medical.sh (and of
scripts/experiment_plan_choice.sh, which uses the medical set's CPU sizes).

    python3 scripts/experiment_data.py medical|general OUT TRAIN_ROWS VAL_ROWS MAX_CHARS PMC TULU [SHAREGPT]

Writes OUT/KIND_train.json and OUT/KIND_val.json; the medical set reads OUT/medmcqa_train.json
(`uniattn medmcqa-split --out OUT`).
"""
import json, random, sys
kind, out, n, v, max_chars, pmc, tulu, *rest = sys.argv[1:]
sharegpt = rest[0] if rest else ""
v, max_chars = int(v), int(max_chars)

def conversations(path, limit):
    """ShareGPT conversations that open with a human turn, answer it, and fit ~4 characters a
    token; the array is truncated, so they are read one by one up to the last complete one."""
    text, dec, convs = open(path, encoding="utf-8").read(), json.JSONDecoder(), []
    i = text.index("[") + 1
    while len(convs) < limit:
        while i < len(text) and text[i] in " \r\n\t,":
            i += 1
        try:
            row, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break
        turns = row.get("conversations") or []
        if (len(turns) >= 2 and turns[0].get("from") == "human" and turns[1].get("from") == "gpt"
                and all(isinstance(t.get("value"), str) and t["value"].strip() for t in turns)
                and sum(len(t["value"]) for t in turns) <= max_chars):
            convs.append({"id": row.get("id"), "conversations": turns})
    return convs

# Never trained on: PMC rows 900.. and the first 100 MedMCQA training-split rows (medical), Tulu
# rows 0..100 and the first 100 kept conversations (general); the validation file is the first
# VAL_ROWS of each.
if kind == "medical":
    first, second = json.load(open(pmc)), json.load(open(f"{out}/medmcqa_train.json"))
    val, train = first[900:900 + v] + second[:v], first[:900] + second[100:]
else:
    first, second = json.load(open(tulu)), conversations(sharegpt, 3000 + 100)
    val, train = first[:v] + second[:v], first[100:] + second[100:]
if n != "all":
    random.Random(0).shuffle(train)
    train = train[: int(n)]
json.dump(train, open(f"{out}/{kind}_train.json", "w"))
json.dump(val, open(f"{out}/{kind}_val.json", "w"))
print(f"{len(train)} training rows, {len(val)} validation rows", file=sys.stderr)
