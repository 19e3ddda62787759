"""Tollgate gateway: a stateless LLM gateway replica with virtual keys."""
