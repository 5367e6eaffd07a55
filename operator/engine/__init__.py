"""Pure decisions: observed state in, actions out. No kopf, kubernetes, torch or I/O."""
