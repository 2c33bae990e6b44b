"""The Flower engine's federation config: local Ray, or joining an existing cluster."""


def test_federation_config_joins_an_existing_ray_cluster_without_a_cpu_count(monkeypatch):
    from fedshield.simulations.engine_flower import federation_config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert federation_config(5, 2) == ("num-supernodes=5 client-resources-num-cpus=1 "
                                       "client-resources-num-gpus=0.0 init-args-num-cpus=2")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert "init-args-num-cpus" not in federation_config(5, 2)


def test_the_repository_app_and_the_engines_app_declare_the_same_config():
    """``flwr run .`` (the repository's pyproject) and the Flower engine's generated app
    (``write_app``, which works from an installed wheel) declare every RunConfig key alike."""
    import tomllib
    from pathlib import Path

    from fedshield.server.server_app import SERVER_APP_KEYS, app_pyproject
    from fedshield.tasks.config import RunConfig

    repo = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]
    app = app_pyproject()["tool"]
    assert repo["flwr"]["app"]["components"] == app["flwr"]["app"]["components"]
    declared = repo["flwr"]["app"]["config"]
    assert declared == app["flwr"]["app"]["config"]  # the same keys and the same defaults
    assert set(declared) == {*RunConfig().to_flower(), *SERVER_APP_KEYS}
