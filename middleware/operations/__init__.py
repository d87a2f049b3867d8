"""Operating the gateway: model health and breakers, adaptive weights, budgets and limits,
feedback, the admin API and dashboard, the audit log."""
