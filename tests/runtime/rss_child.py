"""Child process for memory tests: load a bundle, wait, generate, report — measured from outside."""

from __future__ import annotations

import json
import sys


def main() -> None:
    import runtime

    bundle, budget, n_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cold = "--cold" in sys.argv
    with runtime.load(bundle, budget=None if budget == "none" else budget, cold=cold) as model:
        print("READY " + json.dumps(model.stats().to_json()), flush=True)
        sys.stdin.readline()
        r = model.generate("import os\nimport sys\n\ndef main(argv):\n    ", max_tokens=n_tokens)
        done = {"tokens": r.tokens, "stats": model.stats().to_json()}
        print("DONE " + json.dumps(done), flush=True)
        sys.stdin.readline()


if __name__ == "__main__":
    main()
