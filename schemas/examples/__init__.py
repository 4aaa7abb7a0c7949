"""The example schemas that ship with forma (`forma register NAME --example`)."""
