"""The small services app.py builds and hands to each part that needs them: the
config provider, the store behind its executor, wake-up events and health state.
Each module here knows nothing of the others' users (see the import contracts in
pyproject.toml); the Retarus clients and the mail composer/transport live with
their packages (retarus/clients.py, mail/service.py)."""
