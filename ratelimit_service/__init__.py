"""Tollgate rate-limit service: envoy-format domains, token buckets in Redis."""
