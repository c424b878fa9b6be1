"""Operator and developer tooling: the `dicomflow` CLI, the development stack and its
supervisor, the embedded development broker, and the schema and dashboard generators.
Nothing here runs inside a service."""
