"""One router per resource: extract, openai (chat completions + models), schemas, health, admin."""
