"""The standalone gateway: the Starlette app, the guarded uvicorn protocol, the CLI."""
