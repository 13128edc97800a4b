"""Shared fixtures. Every store test takes `store`, which is parametrized over every embedded backend."""
