"""Single-image latency of ``Classifier.predict`` on one PNG file (decode, model, answer), median of many calls.

Run it on two revisions with ``bench/ab.py`` to see what a change costs one image end to end, e.g. the
out-of-distribution score of issue 20:

    python bench/ab.py --rev c4620e1 --rounds 5 --metric 'ms="ms": ([0-9.]+)' -- bench/predict_latency.py --run RUN --image shoe.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    from imagerec.classifier import Classifier

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    clf = Classifier.load(args.run, runtime="keras")
    for _ in range(30):
        clf.predict(args.image)  # warm-up: traces the compiled function
    medians = []
    for _ in range(args.repeats):
        times = []
        for _ in range(args.calls):
            t = time.perf_counter()
            clf.predict(args.image)
            times.append(time.perf_counter() - t)
        medians.append(statistics.median(times) * 1e3)
    answer = clf.predict(args.image)[0].to_dict()
    print(json.dumps({"ms": round(statistics.median(medians), 4), "repeats_ms": [round(m, 4) for m in medians],
                      "answer": answer}))  # fmt: skip


if __name__ == "__main__":
    main()
