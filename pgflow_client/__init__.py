"""pgflow-py client: start flows and watch their runs live."""

__all__: list[str] = []
