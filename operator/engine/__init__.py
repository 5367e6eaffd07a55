"""Pure decisions: observed state in, actions out. No kopf, kubernetes, torch or I/O.

The operator's handlers and `bakeline run` drive the same functions:

- `pipeline`: a job's stages as a state machine (`Plan`, `RunState`, `next_actions`,
  `stage_started` / `stage_cached` / `stage_finished`), with retries, rollbacks and fallbacks.
- `dag`: ancestors and descendants of stages (ordering and validation live in `bakeline.api`).
- `retry`: exit codes of the agent contract, exponential backoff.
- `cache`: content-addressed cache keys.
- `lanes`: lane admission and the per-agent circuit breaker.
- `slo`: SLIs, error budgets, burn rates, the budget policy.
- `predict`: stage durations for `estimatedCompletion`.
"""
