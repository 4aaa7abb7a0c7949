"""One module per domain of the CLI; each holds thin verbs that parse, build a config and call one function."""
