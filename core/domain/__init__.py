"""Pure domain, no I/O: imports only the standard library, pydantic, itsdangerous and core.domain."""
