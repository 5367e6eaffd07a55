"""The nine baking agents and the contract they share (`bakeline-agent <name> ...`)."""
