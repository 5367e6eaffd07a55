"""The nine baking agents and the contract they share (`bakeline-agent <name> ...`).

One process runs one stage: read the input checkpoint (sha256-verified), do measured work on the
model, write the output checkpoint and a short JSON result to the termination log. See
`bakeline.agents.contract` for the contract and `bakeline.agents.stages` for the agents.
"""

AGENT_VERSION = "0.1.0"
