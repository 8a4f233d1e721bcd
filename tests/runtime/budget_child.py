"""Child process for the budget-change test: generate token by token, each token announced and
acknowledged on stdin, so the parent measures memory from outside at token boundaries and says
when to change the budget ("budget X"), without any timing."""

from __future__ import annotations

import json
import sys


def main() -> None:
    import runtime

    bundle, budget, n_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    prompt = "import os\nimport sys\n\ndef main(argv):\n    "
    with runtime.load(bundle, budget=budget, n_ctx=512, threads=1) as model:
        s = model.stats()
        print("READY " + json.dumps({"dense_bytes": s.dense_bytes,
                                     "expert_capacity_bytes": s.expert_capacity_bytes}),
              flush=True)
        tokens = []
        for ev in model.stream_events(prompt, max_tokens=n_tokens, temperature=0.0):
            if ev.token is not None:
                tokens.append(ev.token)
                print(f"TOKEN {len(tokens)}", flush=True)
                line = sys.stdin.readline().split()
                if line and line[0] == "budget":
                    model.set_budget(line[1])  # a generation runs: applied at its next step
        s = model.stats()
        print("DONE " + json.dumps({"tokens": tokens, "history": s.to_json()["budget_history"],
                                    "capacity": s.expert_capacity_bytes,
                                    "resident": s.resident_expert_bytes}), flush=True)


if __name__ == "__main__":
    main()
