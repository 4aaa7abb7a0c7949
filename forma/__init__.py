"""forma: a JSON Schema and example pairs in, a fine-tuned, schema-constrained extraction API out."""

__version__ = "0.1.0"
