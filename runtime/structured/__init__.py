"""Constrained output: response_format, JSON Schema, GBNF grammars, tools, steering to an end."""
