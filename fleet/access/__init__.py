"""Who may do what: roles, API keys, the audit log."""
