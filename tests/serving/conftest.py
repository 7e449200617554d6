from tests.cli.conftest import Result, mvault  # noqa: F401  (re-exported fixture)
