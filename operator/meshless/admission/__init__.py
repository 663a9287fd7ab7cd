"""Admission webhooks: identity injection, STRICT enforcement, an unforgeable identity label."""
