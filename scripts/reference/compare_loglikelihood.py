"""Compares `uniattn eval mc --per-item` output with hf_loglikelihood.py's for one task:
max and mean |difference| of per-request log-likelihoods and both accuracies.

    python3 scripts/reference/compare_loglikelihood.py OURS.jsonl TASK HF.jsonl
"""
import json
import sys


def main(ours_path, task, hf_path):
    ours = {}
    for line in open(ours_path):
        r = json.loads(line)
        if r["task"].split(":")[0] == task.split(":")[0]:
            ours[r["item"]["doc_id"]] = (r["item"]["gold"], [x["logprob"] for x in r["item"]["results"]])
    hf = {}
    for line in open(hf_path):
        r = json.loads(line)
        hf[r["doc_id"]] = (r["gold"], r["logprobs"])
    common = sorted(set(ours) & set(hf))
    diffs = [abs(a - b) for d in common for a, b in zip(ours[d][1], hf[d][1], strict=True)]
    acc = lambda src: sum(max(range(len(src[d][1])), key=lambda i: (src[d][1][i], -i)) == src[d][0] for d in common) / len(common)
    print(json.dumps({
        "task": task, "questions": len(common), "requests": len(diffs),
        "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs),
        "requests_over_1e-2": sum(x > 1e-2 for x in diffs),
        "acc_ours": acc(ours), "acc_hf": acc(hf),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:4])
