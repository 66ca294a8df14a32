"""Load testing for the streaming endpoint: `python -m load.loadtest --help`."""
