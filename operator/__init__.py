"""The Kubernetes operator, importable as eft.controller (the stdlib owns the name `operator`)."""
