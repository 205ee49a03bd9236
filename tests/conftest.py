pytest_plugins = ["tests.fix_backends", "tests.fix_cli"]
