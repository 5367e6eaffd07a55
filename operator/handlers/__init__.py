"""kopf handlers: thin wrappers that read state, ask the engine, apply its actions."""
