"""Upstream HTTP: routegate's HTTP/1.1 transport behind the httpx API, per-origin settings."""
