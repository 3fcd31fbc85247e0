"""The commands: each parses its arguments once into typed settings and hands every stage what it needs."""
